"""The README's curl example, sent to a live server, answers as the README says."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import requests

from tests.support import README, run_readme_block

pytestmark = pytest.mark.integration


def test_readme_curl_example_classifies_its_digit(demo_server):
    match = re.search(r"curl -d '(?P<body>[^']+)' localhost:8000(?P<path>/\S+)", README.read_text())
    assert match, "the README lost its curl example"
    answer = requests.post(demo_server.url + match["path"], data=match["body"], timeout=30)
    assert answer.status_code == 200
    probabilities = answer.json()["predictions"][0]
    assert int(np.argmax(probabilities)) == 0  # the README says the example is a handwritten 0


def test_readme_v2_example_gives_the_metadata_and_classifies_its_digit(demo_server):
    metadata, answer = (json.loads(line) for line in run_readme_block(" (V2)", demo_server))
    assert metadata["name"] == "digits" and metadata["inputs"][0]["shape"] == [-1, 8, 8, 1]
    assert answer["id"] == "r1" and answer["model_name"] == "digits"
    assert int(np.argmax(answer["outputs"][0]["data"])) == 0  # the same handwritten 0 as the TF Serving example


def test_readme_grpc_example_classifies_its_digit(demo_server):
    script = re.search(r"```python\n(?P<script>.*?)```", README.read_text(), re.S)["script"]
    assert len(script.strip().splitlines()) <= 10, "the README promises a ten-line client"
    assert run_readme_block(" (gRPC)", demo_server) == ["0"]  # the same handwritten 0 as the TF Serving example


def test_readme_tritonclient_grpc_example_classifies_its_digit_and_reads_the_statistics(demo_server):
    assert run_readme_block(" (V2 gRPC)", demo_server) == ["0", "True"]


def test_readme_bulk_cache_and_jobs_example_runs_as_it_says(start_server, demo_model_path):
    server = start_server(MODEL_PATH=str(demo_model_path), WORKERS="1", CACHE_MAX_BYTES="100000000")
    lines = run_readme_block("", server)
    assert [line.strip().lower() for line in lines[:2]] == ["x-batch-size: 1", "x-batch-size: 0"]
    assert '"state":"queued"' in lines[2] or '"state":"running"' in lines[2] or '"state":"done"' in lines[2]
    assert lines[3].startswith('{"predictions":[[')
    assert "already done" in lines[4]


def test_readme_versions_example_serves_the_onnx_version_it_publishes(start_server, demo_model_path, tmp_path):
    base = tmp_path / "digits"
    (base / "1").mkdir(parents=True)
    shutil.copy(demo_model_path, base / "1")
    server = start_server(
        MODEL_BASE_PATH=str(base), MODEL_VERSION_POLICY="all", MODEL_VERSION_LABELS="stable=1,canary=2",
        MODEL_POLL_S="0.2", WORKERS="1", GRPC_PORT="0",
    )  # fmt: skip
    status = json.loads(run_readme_block(" (versions)", server, {"/tmp/digits": str(base)})[-1])
    states = [(s["version"], s["state"]) for s in status["model_version_status"]]
    assert states == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
    assert requests.get(server.url + "/v2/models/digits", timeout=30).json()["platform"] == "onnxruntime_onnx"
    for label, version in (("stable", "1"), ("canary", "2")):
        metadata = requests.get(f"{server.url}/v1/models/digits/labels/{label}/metadata", timeout=30).json()
        assert metadata["model_spec"]["version"] == version
