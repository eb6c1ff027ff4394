"""Convert a served Keras model or SavedModel to ONNX, and check that both give the same answers.

    python scripts/convert_to_onnx.py models/digits.keras            # writes models/digits.onnx
    MODEL_PATH=models/digits.onnx make serve

The conversion is Keras 3's own, `model.export(path, format="onnx")` (tf2onnx underneath, on a
SavedModel traced with `training=False`); a SavedModel directory is wrapped in a Keras
`TFSMLayer` first. The ONNX graph's inputs and outputs are then renamed to the TensorFlow
signature's names, so every protocol answers with the same keys on either backend.

The check runs both backends through the service's own forward passes on `--check` inputs
(the demo model's held-out images, then noisy copies of them; random inputs for other models)
and fails unless every output matches within `--tolerance` (absolute). It prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOLERANCE = 1e-5
CHECK_INPUTS = 1000
HOLDOUT = Path("models/digits_holdout.npz")


def convert(model_path: str, onnx_path: str, opset: int | None = None) -> dict:
    """Write `onnx_path` from the Keras file or SavedModel at `model_path`; return what was converted."""
    import keras
    import numpy as np
    import onnx

    from service.backends.tensorflow import TensorFlowBackend

    signature, _ = TensorFlowBackend().load(model_path)
    model = _keras_model(model_path, signature)
    samples = [np.zeros((1, *_concrete(info.instance_shape)), info.dtype) for info in signature.inputs]
    model(samples[0] if len(samples) == 1 else samples)  # Keras exports only a model that was called
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        exported = os.path.join(scratch, "model.onnx")
        model.export(exported, format="onnx", opset_version=opset, verbose=False)
        graph = onnx.load(exported)
    _rename(graph.graph, [node.name for node in graph.graph.input], [info.name for info in signature.inputs])
    _rename(graph.graph, [node.name for node in graph.graph.output], [info.name for info in signature.outputs])
    onnx.checker.check_model(graph)
    Path(onnx_path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, onnx_path)
    return {
        "source": model_path,
        "onnx": onnx_path,
        "opset": next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")),
        "convert_s": round(time.perf_counter() - started, 2),
        "keras": keras.__version__,
    }


def check(model_path: str, onnx_path: str, count: int = CHECK_INPUTS, batch: int = 32) -> dict:
    """Run both backends on `count` inputs; the largest absolute difference per output, and the argmax agreement."""
    import numpy as np

    from service.backends import load_served_model

    sizes = (1, batch)
    reference = load_served_model(model_path, "tensorflow", 1, sizes, "tensorflow")
    candidate = load_served_model(onnx_path, "onnx", 1, sizes, "onnx")
    inputs = _check_inputs(reference.signature, count)
    worst = {info.name: 0.0 for info in reference.signature.outputs}
    agree = 0
    for start in range(0, count, batch):
        rows = {name: array[start : start + batch] for name, array in inputs.items()}
        expected, got = reference.run(rows), candidate.run(rows)
        for name in worst:
            worst[name] = max(worst[name], float(np.max(np.abs(expected[name].astype("float64") - got[name]))))
        first = reference.signature.outputs[0].name
        agree += int(np.sum(np.argmax(expected[first], axis=-1) == np.argmax(got[first], axis=-1)))
    return {"inputs": count, "max_abs_difference": worst, "same_argmax": agree / count}


def _keras_model(model_path: str, signature):
    import keras

    if not os.path.isdir(model_path):
        return keras.models.load_model(model_path, compile=False)
    inputs = [keras.Input(info.instance_shape, dtype=info.dtype, name=info.name) for info in signature.inputs]
    layer = keras.layers.TFSMLayer(model_path, call_endpoint="serving_default")
    outputs = layer({tensor.name: tensor for tensor in inputs} if len(inputs) > 1 else inputs[0])
    return keras.Model(
        inputs if len(inputs) > 1 else inputs[0],
        [outputs[info.name] for info in signature.outputs] if isinstance(outputs, dict) else outputs,
    )


def _rename(graph, old_names: list[str], new_names: list[str]) -> None:
    """Rename the graph's inputs or outputs, in order, wherever a node reads or writes them."""
    if len(old_names) != len(new_names):
        raise SystemExit(f"the ONNX graph has tensors {old_names}, the TensorFlow signature {new_names}")
    renames = {old: new for old, new in zip(old_names, new_names, strict=True) if old != new}
    for value in (*graph.input, *graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (*graph.input, *graph.output):  # the batch dimension gets a name that says what it is
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def _check_inputs(signature, count: int) -> dict:
    """The demo model's held-out images (then noisy copies of them); otherwise random inputs of the signature."""
    import numpy as np

    generator = np.random.default_rng(0)
    first = signature.inputs[0]
    if len(signature.inputs) == 1 and HOLDOUT.exists():
        images = np.load(HOLDOUT)["images"]
        if images.shape[1:] == _concrete(first.instance_shape):
            copies = -(-count // len(images))
            noisy = [images] + [
                np.clip(images + generator.normal(0, 1, images.shape), 0, 16) for _ in range(copies - 1)
            ]
            return {first.name: np.concatenate(noisy)[:count].astype(first.dtype)}
    return {
        info.name: generator.standard_normal((count, *_concrete(info.instance_shape))).astype(info.dtype)
        for info in signature.inputs
    }


def _concrete(shape) -> tuple[int, ...]:
    return tuple(1 if dim is None else dim for dim in shape)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="Keras .keras file or SavedModel directory")
    parser.add_argument("--output", help="the .onnx file (default: the model's path with .onnx)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: tf2onnx's)")
    parser.add_argument("--check", type=int, default=CHECK_INPUTS, help="inputs to compare both backends on; 0: none")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest absolute difference allowed")
    args = parser.parse_args()
    output = args.output or str(Path(args.model.rstrip("/")).with_suffix(".onnx"))
    report = convert(args.model, output, args.opset)
    if args.check:
        report["check"] = check(args.model, output, args.check)
        worst = max(report["check"]["max_abs_difference"].values())
        report["check"]["within_tolerance"] = worst <= args.tolerance
    print(json.dumps(report))
    return 0 if not args.check or report["check"]["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
