"""The protocol benchmark: every protocol carries the same instance, and each run and codec figure is real, with
either gRPC client."""

from __future__ import annotations

import numpy as np
from tensorflow_serving.apis import predict_pb2

from scripts.grpc_load import run_lean_grpc_closed_loop
from scripts.launcher import LiveServer
from scripts.protocol_bench import PROTOCOLS, bodies_for, codec_cpu_us, runs_for, signature_of
from service.protocols import tfserving_codec, tfserving_grpc, v2_codec
from service.protocols.v2_grpc_codec import decode_model_infer
from service.v2_messages import ModelInferRequest


def test_each_protocol_sends_the_same_instance_and_every_run_is_answered(demo_model_path):
    with LiveServer({"MODEL_PATH": str(demo_model_path), "WORKERS": "1"}) as server:
        server.wait_for_grpc(1)
        bodies = bodies_for(server, "digits")
        loads = {name: run(2, 0.5) for name, run in runs_for(server, bodies, "lean").items()}
        for name, run in runs_for(server, bodies, "grpcio").items():
            if "gRPC" in name:
                loads[f"{name} (grpc.aio)"] = run(2, 0.5)
        unknown = run_lean_grpc_closed_loop(server.grpc_target, "/no.Such/Method", b"", 1, 0.2)
    assert unknown.ok == 0 and unknown.errors > 0, "a call's failure is counted as one"
    for name, load in loads.items():
        assert load.ok > 0 and load.errors == 0, name
        assert load.batch_sizes and min(load.batch_sizes) >= 1, f"{name}: the server's batch sizes are read"
    signature = signature_of(bodies.metadata)
    decoded = [
        tfserving_codec.decode_request(bodies.rest_json, signature, 10).inputs,
        v2_codec.decode_infer_request(bodies.v2_json, None, signature, 10).inputs,
        v2_codec.decode_infer_request(bodies.v2_binary, str(len(bodies.v2_header)), signature, 10).inputs,
        tfserving_grpc.decode_predict(
            predict_pb2.PredictRequest.FromString(bodies.grpc), signature, 10, 1 << 20
        ).inputs,
        decode_model_infer(ModelInferRequest.FromString(bodies.v2_grpc), signature, 10).inputs,
    ]
    for inputs in decoded[1:]:
        np.testing.assert_array_equal(inputs["image"], decoded[0]["image"])
    costs = codec_cpu_us(bodies, repeats=1, requests=20)
    assert list(costs) == list(PROTOCOLS) and all(cost > 0 for cost in costs.values())
