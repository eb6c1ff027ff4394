"""Hypothesis strategies of hostile input, shared by the decoders' property tests and the live fuzz harness."""

from __future__ import annotations

from hypothesis import strategies as st

from service.tfserving_messages import DataType, PredictRequest

# Dimensions as a client may declare them: small, or as large as int64 goes.
dims = st.one_of(st.integers(0, 8), st.integers(0, 2**63 - 1), st.sampled_from([2**20, 2**31, 2**40, 2**62]))
shapes = st.lists(dims, min_size=0, max_size=5)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=40,
)
TYPED_FIELDS = ["float_val", "double_val", "int_val", "int64_val", "bool_val", "string_val", "half_val"]
DTYPES = ["DT_FLOAT", "DT_DOUBLE", "DT_INT32", "DT_INT64", "DT_BOOL", "DT_STRING", "DT_HALF", "DT_INVALID"]


@st.composite
def predict_requests(draw, names: tuple[str, ...] = ("x", "s", "other"), model: str = "") -> PredictRequest:
    """TF Serving PredictRequests: inputs of any dtype and declared shape, values listed or packed, or neither."""
    request = PredictRequest()
    request.model_spec.name = model
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        tensor = request.inputs[name]
        tensor.dtype = DataType.Value(draw(st.sampled_from(DTYPES)))
        tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=size) for size in draw(shapes))
        if draw(st.booleans()):
            tensor.tensor_content = draw(st.binary(max_size=512))
        field = draw(st.sampled_from(TYPED_FIELDS))
        count = draw(st.integers(0, 64))
        if field == "string_val":
            tensor.string_val.extend([b"v"] * count)
        elif field == "bool_val":
            tensor.bool_val.extend([True] * count)
        elif field in ("float_val", "double_val"):
            getattr(tensor, field).extend(draw(st.lists(st.floats(width=32), min_size=count, max_size=count)))
        else:
            getattr(tensor, field).extend(draw(st.lists(st.integers(0, 2**31 - 1), min_size=count, max_size=count)))
    return request
