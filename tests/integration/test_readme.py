"""The README's curl example, sent to a live server, answers as the README says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_curl_example_classifies_its_digit(demo_server):
    match = re.search(r"curl -d '(?P<body>[^']+)' localhost:8000(?P<path>/\S+)", README.read_text())
    assert match, "the README lost its curl example"
    answer = requests.post(demo_server.url + match["path"], data=match["body"], timeout=30)
    assert answer.status_code == 200
    probabilities = answer.json()["predictions"][0]
    assert int(np.argmax(probabilities)) == 0  # the README says the example is a handwritten 0
