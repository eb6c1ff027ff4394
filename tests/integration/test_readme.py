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


def test_readme_bulk_cache_and_jobs_example_runs_as_it_says(start_server, demo_model_path):
    import subprocess

    text = README.read_text()
    block = re.search(r"<!-- run by tests/integration/test_readme.py -->\n```sh\n(?P<script>.*?)```", text, re.S)
    assert block, "the README lost its bulk, cache and jobs example"
    server = start_server(MODEL_PATH=str(demo_model_path), WORKERS="1", CACHE_MAX_BYTES="100000000")
    script = block["script"].replace("localhost:8000", server.url.removeprefix("http://"))
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.strip().lower() for line in lines[:2]] == ["x-batch-size: 1", "x-batch-size: 0"]
    assert '"state":"queued"' in lines[2] or '"state":"running"' in lines[2] or '"state":"done"' in lines[2]
    assert lines[3].startswith('{"predictions":[[')
    assert "already done" in lines[4]
