"""Bad input, fuzzed: schemathesis generates requests from /openapi.json against a live server.

Valid and invalid bodies, paths, methods and headers: none may get a 500, every 4xx must
carry a JSON error body, and every answer must match the document (schemathesis' checks,
except its "no 5xx" one: a 504 for a deadline the request itself set is the documented
answer, so 5xx are counted here instead; and its "use after free" one: `DELETE /v1/jobs/<id>`
cancels a job, whose record stays readable, cancelled, as the API says). They are set in
schemathesis.toml beside this file, with one exception per operation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES_PER_OPERATION = 20  # under the default worker class: test_hostile.py fuzzes both workers
CONFIG = Path(__file__).with_name("schemathesis.toml")  # per-operation exceptions, each with its reason


def test_fuzzed_requests_get_no_500_and_json_errors(demo_server, tmp_path):
    har = tmp_path / "fuzz.har"
    command = [
        str(SCHEMATHESIS if SCHEMATHESIS.exists() else shutil.which("schemathesis")),
        "--config-file", str(CONFIG),
        "run", f"{demo_server.url}/openapi.json",
        "-n", str(EXAMPLES_PER_OPERATION), "--seed", "1",
        "--report", "har", "--report-har-path", str(har),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:]
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(entry["response"]["status"] for entry in entries)
    assert len(entries) >= 200, statuses
    assert statuses[500] == 0
    assert set(statuses) <= {200, 202, 400, 404, 405, 409, 410, 413, 415, 422, 503, 504}, statuses
    for entry in entries:
        response = entry["response"]
        if 400 <= response["status"] < 500:
            body = json.loads(response["content"]["text"])
            assert isinstance(body["error"], str) and body["error"], entry["request"]["url"]
