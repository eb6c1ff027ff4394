"""The TensorFlow backend: loading .keras files and SavedModels, its errors, and its per-worker configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.backends import backend_for, load_served_model
from service.backends.base import InputRejected, ModelLoadError, OutOfDeviceMemory
from service.backends.signature import TensorInfo
from service.backends.tensorflow import TensorFlowBackend, _numpy_forward


def test_missing_model_path_says_how_to_fix_it(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_served_model(str(tmp_path / "nope.keras"), "nope", 1, (1,))


def test_a_truncated_keras_file_is_reported_as_truncated_not_as_missing(demo_model_path, tmp_path):
    truncated = tmp_path / "model.keras"
    truncated.write_bytes(demo_model_path.read_bytes()[:20_000])  # a copy cut short
    with pytest.raises(ModelLoadError, match=r"\(20,000 bytes\) is not a readable \.keras archive") as raised:
        TensorFlowBackend().load(str(truncated))
    assert "not found" not in str(raised.value).lower()  # Keras' own message says "File not found"


def test_a_keras_file_damaged_inside_names_the_damaged_member(demo_model_path, tmp_path):
    import zipfile

    damaged = tmp_path / "model.keras"
    data = bytearray(demo_model_path.read_bytes())
    with zipfile.ZipFile(demo_model_path) as archive:
        member = max(archive.infolist(), key=lambda info: info.compress_size)
    middle = member.header_offset + 30 + len(member.filename) + member.compress_size // 2
    data[middle] ^= 0xFF  # one flipped byte in the largest member's data
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=f"damaged .keras archive: its member '{member.filename}'"):
        TensorFlowBackend().load(str(damaged))


@pytest.mark.slow
def test_keras_file_predictions_match_keras(demo_model_path, demo_holdout):
    import keras

    images, _ = demo_holdout
    served = load_served_model(str(demo_model_path), "digits", 1, (1, 2, 4, 8))
    assert served.signature.inputs == (TensorInfo("image", "float32", (8, 8, 1)),)
    assert served.signature.outputs == (TensorInfo("probabilities", "float32", (10,)),)
    reference = keras.models.load_model(demo_model_path)(images[:5], training=False).numpy()
    ours = served.run({"image": images[:5]})["probabilities"]
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_saved_model_directory_is_served(demo_model_path, demo_holdout, tmp_path):
    import keras

    images, _ = demo_holdout
    keras_model = keras.models.load_model(demo_model_path)
    keras_model.export(str(tmp_path / "saved"), verbose=False)
    served = load_served_model(str(tmp_path / "saved"), "digits", 1, (1, 4))
    assert [info.name for info in served.signature.outputs] == ["output_0"]
    ours = served.predict([{"image": images[:1]}, {"image": images[1:3]}])
    np.testing.assert_allclose(
        np.concatenate([r["output_0"] for r in ours]), keras_model(images[:3]).numpy(), rtol=1e-5, atol=1e-6
    )


class FakeTfConfig:
    """Records what a worker asks of tf.config, and refuses late changes as TF does."""

    def __init__(self, gpus):
        self.calls, self._gpus, self.started = [], gpus, False
        self.threading = SimpleNamespace(
            set_intra_op_parallelism_threads=lambda n: self._record("intra", n),
            set_inter_op_parallelism_threads=lambda n: self._record("inter", n),
        )
        self.LogicalDeviceConfiguration = lambda memory_limit=None: ("logical", memory_limit)

    def _record(self, *call):
        if self.started:
            raise RuntimeError("cannot be modified after initialization")
        self.calls.append(call)

    def list_physical_devices(self, kind):
        return list(self._gpus) if kind == "GPU" else ["PhysicalDevice(CPU:0)"]

    def set_logical_device_configuration(self, device, configs):
        self._record("limit", device, configs)

    def list_logical_devices(self):
        self.started = True
        return [SimpleNamespace(name="/device:CPU:0")] + [SimpleNamespace(name="/device:GPU:0") for _ in self._gpus]


def test_worker_configuration_sets_threads_then_memory_limit():
    config = FakeTfConfig(gpus=["PhysicalDevice(GPU:0)"])
    devices = TensorFlowBackend().configure(2, 1, 6000, tf=SimpleNamespace(config=config))
    assert config.calls == [("intra", 2), ("inter", 1), ("limit", "PhysicalDevice(GPU:0)", [("logical", 6000)])]
    assert devices == ["/device:CPU:0", "/device:GPU:0"]


def test_cpu_worker_sets_no_memory_limit():
    config = FakeTfConfig(gpus=[])
    assert TensorFlowBackend().configure(4, 1, None, tf=SimpleNamespace(config=config)) == ["/device:CPU:0"]
    assert [call[0] for call in config.calls] == ["intra", "inter"]


def test_cpu_lanes_are_logical_cpus_with_a_pool_each(monkeypatch):
    monkeypatch.delenv("TF_OVERRIDE_GLOBAL_THREADPOOL", raising=False)
    config = FakeTfConfig(gpus=[])
    TensorFlowBackend().configure(2, 1, None, cpu_lanes=3, tf=SimpleNamespace(config=config))
    assert config.calls[-1] == ("limit", "PhysicalDevice(CPU:0)", [("logical", None)] * 3)
    assert os.environ["TF_OVERRIDE_GLOBAL_THREADPOOL"] == "1"  # else TF gives every device the one pool


def test_a_gpu_worker_has_no_cpu_lanes(monkeypatch):
    monkeypatch.delenv("TF_OVERRIDE_GLOBAL_THREADPOOL", raising=False)
    config = FakeTfConfig(gpus=["PhysicalDevice(GPU:0)"])
    TensorFlowBackend().configure(2, 1, 6000, cpu_lanes=3, tf=SimpleNamespace(config=config))
    assert [call[1] for call in config.calls if call[0] == "limit"] == ["PhysicalDevice(GPU:0)"]
    assert "TF_OVERRIDE_GLOBAL_THREADPOOL" not in os.environ


LANES_PROBE = """
import json, sys
import numpy as np
from service.backends.tensorflow import TensorFlowBackend
backend = TensorFlowBackend()
print(json.dumps({"devices": backend.configure(1, 1, None, cpu_lanes=2)}))
import tensorflow as tf
images = np.load(sys.argv[3])["images"][:3]
for path in sys.argv[1:3]:
    (_, on_lane), (_, plain) = backend.load(path, "/device:CPU:1"), backend.load(path)
    ours, theirs = on_lane({"image": images}), plain({"image": images})
    variables = on_lane.keep_alive.variables  # the model the pass keeps alive
    devices = {v.device if isinstance(v, tf.Variable) else v.value.device for v in variables}
    print(json.dumps({"variables": sorted(devices), "same": all(np.allclose(ours[k], theirs[k]) for k in ours)}))
"""


@pytest.mark.slow
def test_a_model_on_a_lane_keeps_its_variables_there_and_answers_the_same(demo_model_path, tmp_path):
    """In a process of its own: TF's devices are set once per process, and this one's are set."""
    import keras

    keras.models.load_model(demo_model_path).export(str(tmp_path / "saved"), verbose=False)
    holdout = demo_model_path.with_name("digits_holdout.npz")
    command = [sys.executable, "-c", LANES_PROBE, str(demo_model_path), str(tmp_path / "saved"), str(holdout)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr[-3000:]
    first, *models = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert first["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    assert len(models) == 2  # the .keras file, then the SavedModel
    for model in models:
        assert model["variables"] and all(device.endswith("CPU:1") for device in model["variables"])
        assert model["same"]


def test_gpu_worker_without_a_visible_gpu_fails_loudly():
    with pytest.raises(RuntimeError, match="sees none"):
        TensorFlowBackend().configure(1, 1, 6000, tf=SimpleNamespace(config=FakeTfConfig(gpus=[])))


def test_a_model_no_backend_loads_is_refused_by_name(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no model that a backend here loads"):
        load_served_model(str(path), "m", 1, (1,))
    assert isinstance(backend_for(str(tmp_path)), TensorFlowBackend)  # a directory: a SavedModel


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tf_error", "raised"), [("InvalidArgumentError", InputRejected), ("ResourceExhaustedError", OutOfDeviceMemory)]
)
def test_tensorflow_errors_become_the_backend_errors_the_service_knows(tf_error, raised):
    import tensorflow as tf

    def compiled(*tensors):
        raise getattr(tf.errors, tf_error)(None, None, "Graph execution error:\nDetected at node x\nwhat went wrong")

    forward = _numpy_forward(compiled, (TensorInfo("x", "float32", (3,)),), keep_alive=None)
    with pytest.raises(raised, match="what went wrong"):
        forward({"x": np.zeros((1, 3), dtype=np.float32)})
