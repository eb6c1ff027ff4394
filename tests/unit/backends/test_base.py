"""What every backend's model gets: padding, splitting and merging requests, and the warm-up with its memory probe."""

from __future__ import annotations

import numpy as np
import pytest

from service.backends.base import ModelInputs, ModelLoadError, OutOfDeviceMemory, ServedModel, predict_each_model
from service.backends.signature import ModelSignature, TensorInfo


def test_batches_are_padded_to_a_compiled_size_and_trimmed(fake_model, fake_forward):
    outputs = fake_model.run({"x": np.ones((3, 3), dtype=np.float32)})
    assert fake_forward.batch_sizes == [4]  # 3 padded up to the next compiled size
    assert outputs["y"].shape == (3, 3)


def test_each_payload_gets_its_own_rows(fake_model, fake_forward):
    payloads = [{"x": np.full((count, 3), value, dtype=np.float32)} for value, count in ((1, 2), (5, 1), (7, 3))]
    results = fake_model.predict(payloads)
    assert fake_forward.batch_sizes == [8]  # one forward pass for six instances
    assert [r["y"][:, 0].tolist() for r in results] == [[2, 2], [10], [14, 14, 14]]


def test_payloads_of_different_shapes_run_as_separate_passes():
    signature = ModelSignature((TensorInfo("t", "int64", (None,)),), (TensorInfo("n", "int64", ()),))
    model = ServedModel("v", 1, signature, lambda a: {"n": a["t"].sum(axis=1)}, (1, 2, 4))
    short, long_ = {"t": np.array([[1, 2]])}, {"t": np.array([[1, 2, 3], [4, 5, 6]])}
    results = model.predict([short, long_, short])
    assert [r["n"].tolist() for r in results] == [[3], [6, 15], [3]]


def test_more_instances_than_the_largest_size_is_an_error(fake_model):
    with pytest.raises(ValueError, match="exceed"):
        fake_model.run({"x": np.ones((9, 3), dtype=np.float32)})


def test_warm_up_runs_every_compiled_size(fake_model, fake_forward):
    timings = fake_model.warm_up(repeats=2)
    assert sorted(timings) == [1, 2, 4, 8]
    assert sorted(set(fake_forward.batch_sizes)) == [1, 2, 4, 8]


def out_of_memory_above(rows: int, forward):
    """A forward pass that runs out of device memory, as a backend reports it, above `rows` rows."""

    def run(arrays):
        if len(arrays["x"]) > rows:
            raise OutOfDeviceMemory(f"OOM when allocating tensor with {len(arrays['x'])} rows")
        return forward(arrays)

    return run


def test_on_a_gpu_the_warm_up_keeps_the_sizes_that_fit_with_a_margin(fake_model, fake_forward):
    # Batch 8 needs 10 rows with the 25% margin and fits; batch 16 would need 20 and does not.
    model = ServedModel("m", 1, fake_model.signature, out_of_memory_above(12, fake_forward), (1, 2, 4, 8, 16))
    timings = model.warm_up(repeats=1, memory_check_passes=2)
    assert sorted(timings) == [1, 2, 4, 8]
    assert fake_forward.batch_sizes.count(10) == 2  # batch 8's margin check: two passes at once


def test_the_gpu_probe_passes_other_errors_on(fake_model, fake_forward):
    fake_forward.fail_with = FloatingPointError("bad kernel")
    with pytest.raises(FloatingPointError):
        fake_model.warm_up(repeats=1, memory_check_passes=1)


def test_when_not_even_batch_1_fits_the_model_cannot_be_served(fake_model, fake_forward):
    model = ServedModel("m", 1, fake_model.signature, out_of_memory_above(0, fake_forward), (1, 2))
    with pytest.raises(ModelLoadError, match="not even a batch of 1"):
        model.warm_up(repeats=1, memory_check_passes=1)


def test_a_paced_warm_up_pauses_after_every_pass_as_long_as_it_took(fake_model, fake_forward):
    pauses = []
    timings = fake_model.warm_up(repeats=2, pause=pauses.append)
    assert len(pauses) == 3 * len(timings) == len(fake_forward.batch_sizes)  # a building pass, then two timed
    assert all(seconds >= 0 for seconds in pauses)


def test_each_versions_payloads_run_through_their_own_model_in_order():
    signature = ModelSignature((TensorInfo("x", "float32", (1,)),), (TensorInfo("y", "float32", (1,)),))
    passes = []

    def scaling(factor):
        def forward(arrays):
            passes.append((factor, len(arrays["x"])))
            return {"y": arrays["x"] * factor}

        return ServedModel("m", factor, signature, forward, (1, 2, 4))

    one, two = scaling(1), scaling(2)
    rows = [np.full((1, 1), value, np.float32) for value in (1, 2, 3)]
    payloads = [ModelInputs(one, {"x": rows[0]}), ModelInputs(two, {"x": rows[1]}), ModelInputs(one, {"x": rows[2]})]
    answers = predict_each_model(payloads)
    assert [float(answer["y"][0, 0]) for answer in answers] == [1.0, 4.0, 3.0]
    assert sorted(passes) == [(1, 2), (2, 1)]  # one pass per version
