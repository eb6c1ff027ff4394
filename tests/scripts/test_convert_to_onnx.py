"""scripts/convert_to_onnx.py: the demo model and a SavedModel converted, and checked against TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from scripts.launcher import PROJECT_ROOT

pytestmark = pytest.mark.slow


def convert(source: str, output, *options: str) -> tuple[int, dict]:
    command = [sys.executable, "scripts/convert_to_onnx.py", source, "--output", str(output), *options]
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_demo_model_answers_1000_held_out_inputs_as_tensorflow_does(demo_model_path, tmp_path):
    code, report = convert(str(demo_model_path), tmp_path / "digits.onnx")
    assert code == 0, report
    check = report["check"]
    assert check["inputs"] == 1000 and check["within_tolerance"] and check["same_argmax"] == 1.0
    assert check["max_abs_difference"]["probabilities"] <= 1e-5
    graph = onnx.load(str(tmp_path / "digits.onnx")).graph
    assert [value.name for value in graph.input] == ["image"]  # TensorFlow's names, so clients see the same keys
    assert [value.name for value in graph.output] == ["probabilities"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_a_savedmodel_is_converted_and_a_failed_check_fails_the_script(demo_model_path, tmp_path):
    import keras

    keras.models.load_model(demo_model_path).export(str(tmp_path / "saved"), verbose=False)
    code, report = convert(str(tmp_path / "saved"), tmp_path / "saved.onnx", "--check", "64")
    assert code == 0 and report["check"]["max_abs_difference"]["output_0"] <= 1e-5
    # No difference is below a negative tolerance: the script must then fail, whatever this CPU computes.
    code, report = convert(str(tmp_path / "saved"), tmp_path / "strict.onnx", "--check", "8", "--tolerance", "-1")
    assert code == 1 and not report["check"]["within_tolerance"]
