"""The ONNX Runtime backend: signatures from the graph, the forward pass, its errors, and per-worker configuration.

The models are small graphs written with onnx.helper, so these tests need no TensorFlow.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service.backends import backend_for, load_served_model
from service.backends.base import InputRejected, ModelLoadError
from service.backends.onnx import OnnxBackend
from service.backends.signature import TensorInfo
from service.backends.tensorflow import TensorFlowBackend


def write_model(path, nodes, inputs, outputs, initializers=()) -> str:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def doubling_model(tmp_path) -> str:
    """y = 2x on float rows of 3, with a batch dimension of any size."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    return write_model(
        tmp_path / "double.onnx",
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [two],
    )


def test_signature_comes_from_the_graph_and_predictions_from_the_session(doubling_model):
    served = load_served_model(doubling_model, "double", 1, (1, 4))
    assert served.signature.inputs == (TensorInfo("x", "float32", (3,)),)
    assert served.signature.outputs == (TensorInfo("y", "float32", (3,)),)
    assert served.platform == "onnxruntime_onnx"
    rows = np.arange(9, dtype=np.float32).reshape(3, 3)
    answers = served.predict([{"x": rows[:1]}, {"x": rows[1:]}])
    np.testing.assert_array_equal(np.concatenate([a["y"] for a in answers]), rows * 2)
    assert sorted(served.warm_up(repeats=1)) == [1, 4]  # every padded size ran


def test_unknown_inner_dimensions_stay_unknown(tmp_path):
    path = write_model(
        tmp_path / "identity.onnx",
        [helper.make_node("Identity", ["tokens"], ["same"])],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("same", TensorProto.INT64, ["batch", None])],
    )
    signature, _ = OnnxBackend().load(path)
    assert signature.inputs == (TensorInfo("tokens", "int64", (None,)),)
    assert signature.outputs == (TensorInfo("same", "int64", (None,)),)


def test_a_fixed_batch_dimension_is_refused_with_the_fix(tmp_path):
    path = write_model(
        tmp_path / "fixed.onnx",
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    with pytest.raises(ModelLoadError, match="dynamic batch dimension"):
        OnnxBackend().load(path)


def test_a_file_that_is_not_onnx_is_a_load_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match="cannot load ONNX model"):
        load_served_model(str(path), "broken", 1, (1,))


def test_inputs_the_session_refuses_are_the_clients_mistake(doubling_model):
    _, forward = OnnxBackend().load(doubling_model)
    with pytest.raises(InputRejected) as refused:
        forward({"x": np.zeros((2, 3), np.float64)})
    assert "expected: (tensor(float))" in str(refused.value)
    assert not str(refused.value).startswith("[ONNXRuntimeError]")


def test_string_inputs_are_given_as_text(tmp_path):
    path = write_model(
        tmp_path / "strings.onnx",
        [helper.make_node("Identity", ["words"], ["echo"])],
        [helper.make_tensor_value_info("words", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"])],
    )
    served = load_served_model(path, "strings", 1, (1, 2))
    assert served.signature.inputs == (TensorInfo("words", "string", ()),)
    answer = served.run({"words": np.array([b"caf\xc3\xa9", "tea"], dtype=object)})
    assert list(answer["echo"]) == ["café", "tea"]


def test_sessions_get_the_workers_threads_and_do_not_spin(doubling_model):
    backend = OnnxBackend()
    assert backend.configure(2, 1, None) == ["CPUExecutionProvider"]
    captured = {}

    class RecordingSession:
        def __init__(self, path, sess_options, providers):
            captured.update(options=sess_options, providers=providers)

        def get_inputs(self):
            return [SimpleNamespace(name="x", type="tensor(float)", shape=["batch", 3])]

        get_outputs = get_inputs

    import onnxruntime

    backend.load(doubling_model, ort=SimpleNamespace(**{**vars(onnxruntime), "InferenceSession": RecordingSession}))
    options = captured["options"]
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert captured["providers"] == ["CPUExecutionProvider"]


def test_a_gpu_worker_puts_cuda_first_with_its_memory_limit():
    ort = SimpleNamespace(get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    backend = OnnxBackend()
    assert backend.configure(1, 1, 6000, ort=ort) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    cuda_options = backend._providers[0][1]
    assert cuda_options["device_id"] == 0  # the only GPU CUDA_VISIBLE_DEVICES leaves the worker
    assert cuda_options["gpu_mem_limit"] == 6000 * 1024 * 1024


def test_a_gpu_worker_without_cuda_in_onnxruntime_fails_loudly():
    ort = SimpleNamespace(get_available_providers=lambda: ["CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        OnnxBackend().configure(1, 1, 6000, ort=ort)


def test_the_backend_is_chosen_by_the_path_unless_one_is_named(tmp_path):
    assert isinstance(backend_for("model.onnx"), OnnxBackend)
    assert isinstance(backend_for("model.keras"), TensorFlowBackend)
    assert isinstance(backend_for("model.onnx", "onnx"), OnnxBackend)
    with pytest.raises(ModelLoadError, match=r"convert_to_onnx\.py"):
        backend_for("model.keras", "onnx")
    with pytest.raises(ModelLoadError, match="MODEL_BACKEND=tensorflow does not serve"):
        backend_for("model.onnx", "tensorflow")
