"""What a hostile message costs each decoder: generated messages (hypothesis), their peak allocation and CPU time.

The bound (docs/reliability.md, "Hostile requests"): a refused message costs at most
ALLOCATION_MULTIPLE times its own bytes in memory (plus a small constant), and CPU time in
proportion to its bytes. An accepted one may describe more data than it carries only where its
protocol says so (a TensorProto's lone value standing for every element), and never more than
MAX_BODY_BYTES. Every message is either decoded or refused with BadRequest: never another error.
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.backends.signature import ModelSignature, TensorInfo
from service.errors import BadRequest
from service.protocols import tfserving_codec, tfserving_grpc, v2_codec
from service.tfserving_messages import DataType, PredictRequest
from tests.strategies import json_values, predict_requests, shapes

SIGNATURE = ModelSignature(
    (TensorInfo("x", "float32", (None, 4)), TensorInfo("s", "string", ())),
    (TensorInfo("y", "float32", (4,)),),
)
IMAGE_SIGNATURE = ModelSignature((TensorInfo("image", "float32", (8, 8, 1)),), (TensorInfo("p", "float32", (10,)),))
MAX_INSTANCES, MAX_BYTES = 100, 64 * 1024
ALLOCATION_MULTIPLE = 64  # bytes allocated at the peak per byte of the message refused
ALLOCATION_CONSTANT = 64 * 1024  # what any message costs: the error, its message, the parser's first buffers
CPU_PER_BYTE_S, CPU_CONSTANT_S = 10e-6, 0.1  # about 1 us a byte here: ten times that, for slower or busier machines
EXAMPLES = settings(
    max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "150")), deadline=None, suppress_health_check=list(HealthCheck)
)  # `make fuzz` runs more


def cost(decode, message: bytes | PredictRequest) -> tuple[str, int, float]:
    """Decode `message`: "decoded" or "refused", the peak bytes allocated meanwhile, and the CPU time taken."""
    tracemalloc.start()
    started = time.process_time()
    try:
        decode(message)
        outcome = "decoded"
    except BadRequest:
        outcome = "refused"
    finally:
        elapsed_s = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return outcome, peak, elapsed_s


def check_bound(outcome: str, peak: int, elapsed_s: float, size: int) -> None:
    allowed = ALLOCATION_MULTIPLE * size + ALLOCATION_CONSTANT
    if outcome == "decoded":
        allowed += 4 * MAX_BYTES  # what it may describe: at most MAX_BODY_BYTES, in its dtype and a copy or two
    assert peak <= allowed, f"{outcome}: {peak:,} bytes allocated for a message of {size:,}"
    assert elapsed_s <= CPU_CONSTANT_S + CPU_PER_BYTE_S * size, f"{outcome}: {elapsed_s:.3f} s for {size:,} bytes"


@EXAMPLES
@given(document=st.one_of(json_values, st.fixed_dictionaries({"instances": json_values}), st.fixed_dictionaries(
    {"inputs": st.one_of(json_values, st.fixed_dictionaries({"x": json_values, "s": json_values}))}
)))  # fmt: skip
def test_tf_serving_json_costs_at_most_a_multiple_of_its_bytes(document):
    body = json.dumps(document).encode()
    for signature in (SIGNATURE, IMAGE_SIGNATURE):
        outcome, peak, elapsed_s = cost(
            lambda message, signature=signature: tfserving_codec.decode_request(message, signature, MAX_INSTANCES),
            body,
        )
        check_bound(outcome, peak, elapsed_s, len(body))


def test_many_small_instances_cost_a_multiple_of_their_bytes_too():
    """The densest JSON there is (empty lists, one-digit numbers): what parsing a large refused body costs."""
    for instance in (b"[]", b"1", b"[[]]", b"{}", b'""'):
        body = b'{"instances": [' + b",".join([instance] * 50_000) + b"]}"
        outcome, peak, elapsed_s = cost(lambda message: tfserving_codec.decode_request(message, SIGNATURE, 100), body)
        assert outcome == "refused"
        check_bound(outcome, peak, elapsed_s, len(body))


v2_tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "s", "other"]), "shape": shapes, "datatype": st.sampled_from(["FP32", "BYTES"])},
    optional={"data": json_values, "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 2**40)})},
)  # fmt: skip


@EXAMPLES
@given(tensors=st.lists(v2_tensors, max_size=3), binary=st.binary(max_size=256), as_header=st.booleans())
def test_open_inference_protocol_bodies_cost_at_most_a_multiple_of_their_bytes(tensors, binary, as_header):
    header = json.dumps({"inputs": tensors}).encode()
    body, header_length = (header + binary, str(len(header))) if as_header else (header, None)
    outcome, peak, elapsed_s = cost(
        lambda message: v2_codec.decode_infer_request(message, header_length, SIGNATURE, MAX_INSTANCES), body
    )
    check_bound(outcome, peak, elapsed_s, len(body))


@EXAMPLES
@given(request=predict_requests())
def test_tensor_protos_cost_at_most_a_multiple_of_their_bytes(request):
    outcome, peak, elapsed_s = cost(
        lambda message: tfserving_grpc.decode_predict(message, SIGNATURE, MAX_INSTANCES, MAX_BYTES), request
    )
    check_bound(outcome, peak, elapsed_s, request.ByteSize())


def test_a_49_byte_message_declaring_200_000_images_is_refused_for_a_few_kilobytes():
    """The case found by hand: dims [200000, 8, 8, 1] and one float_val, once expanded before it was checked."""
    request = PredictRequest()
    tensor = request.inputs["image"]
    tensor.dtype = DataType.Value("DT_FLOAT")
    tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=size) for size in (200_000, 8, 8, 1))
    tensor.float_val.append(0.5)
    outcome, peak, elapsed_s = cost(
        lambda message: tfserving_grpc.decode_predict(message, IMAGE_SIGNATURE, 10_000, 10 << 20), request
    )
    assert outcome == "refused" and request.ByteSize() < 50
    check_bound(outcome, peak, elapsed_s, request.ByteSize())
    assert np.dtype(np.float32).itemsize * 200_000 * 64 > 1000 * peak  # against the 51 MB it would have expanded to
