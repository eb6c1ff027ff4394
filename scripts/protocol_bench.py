"""What each protocol costs the server: throughput and server CPU per request, same server, same run.

One server per model serves all five: TF Serving REST (JSON), V2 REST with JSON tensors, V2 REST
with binary tensors, TF Serving gRPC, and V2 gRPC (raw contents, as tritonclient.grpc sends them).
Each carries the same one instance, shaped from the model's own metadata. For each number of
closed-loop clients, the protocols run in turn, in alternating order over the rounds (ABBA), and
the table gives each one's median over the rounds and the median of its per-round ratio to TF
Serving REST JSON (the same round, so a slow spell of the shared machine slows both). Server CPU
is that of all the server's processes per request answered; the clients run in this process
(asyncio HTTP, grpc.aio), whose CPU is reported too.

    python -m scripts.protocol_bench --model models/heavy.keras --model models/digits.keras
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson

from scripts.bench import machine_description, publish, server_cpu_seconds
from scripts.grpc_load import run_lean_grpc_closed_loop
from scripts.launcher import LiveServer
from scripts.loadgen import LoadResult, run_closed_loop, run_grpc_closed_loop
from service.v2_messages import ModelInferRequest

GRPC_CLIENTS = {"lean": "scripts/grpc_load.py's asyncio HTTP/2", "grpcio": "grpc.aio"}
PROTOCOLS = ("TF Serving REST, JSON", "V2 REST, JSON", "V2 REST, binary", "TF Serving gRPC", "V2 gRPC")


@dataclass(frozen=True)
class Bodies:
    """One request of each protocol, carrying the same instance."""

    model_name: str
    metadata: dict  # the model's V2 metadata
    rest_json: bytes
    v2_json: bytes
    v2_header: bytes  # the JSON before the binary tensors
    v2_binary: bytes
    grpc: bytes  # a serialized PredictRequest
    v2_grpc: bytes  # a serialized ModelInferRequest, the instance in raw_input_contents (as tritonclient sends)


def bodies_for(server: LiveServer, model_name: str) -> Bodies:
    from tensorflow_serving.apis import predict_pb2

    from service.protocols.tensor_proto import from_array

    with urllib.request.urlopen(f"{server.url}/v2/models/{model_name}") as answer:
        metadata = json.load(answer)
    (tensor,) = metadata["inputs"]
    shape = [1, *(8 if size < 0 else size for size in tensor["shape"][1:])]
    instance = np.random.default_rng(0).random(shape, dtype=np.float32)  # the bench's models take FP32
    v2_json = json.dumps({"inputs": [{**tensor, "shape": shape, "data": instance.ravel().tolist()}]}).encode()
    header = json.dumps(
        {
            "inputs": [{**tensor, "shape": shape, "parameters": {"binary_data_size": instance.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    message = predict_pb2.PredictRequest()
    message.model_spec.name = model_name
    from_array(instance, message.inputs[tensor["name"]])
    rest_json = json.dumps({"instances": instance.tolist()}).encode()
    v2_binary = header + instance.tobytes()
    infer = ModelInferRequest(model_name=model_name)
    infer.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=shape)
    infer.raw_input_contents.append(instance.tobytes())
    grpc, v2_grpc = message.SerializeToString(), infer.SerializeToString()
    return Bodies(model_name, metadata, rest_json, v2_json, header, v2_binary, grpc, v2_grpc)


def runs_for(server: LiveServer, bodies: Bodies, grpc_client: str) -> dict[str, Callable[[int, float], LoadResult]]:
    """For each protocol, a run of one instance per request: (clients, seconds) -> its LoadResult."""
    grpc_loop = run_lean_grpc_closed_loop if grpc_client == "lean" else run_grpc_closed_loop
    from service.protocols.tfserving_grpc import PREDICT
    from service.protocols.v2_grpc import MODEL_INFER

    v2_path = f"/v2/models/{bodies.model_name}/infer"
    binary_headers = {"Inference-Header-Content-Length": str(len(bodies.v2_header))}
    return {
        PROTOCOLS[0]: lambda clients, seconds: run_closed_loop(
            server.url, bodies.rest_json, clients, seconds, f"/v1/models/{bodies.model_name}:predict"
        ),
        PROTOCOLS[1]: lambda clients, seconds: run_closed_loop(server.url, bodies.v2_json, clients, seconds, v2_path),
        PROTOCOLS[2]: lambda clients, seconds: run_closed_loop(
            server.url, bodies.v2_binary, clients, seconds, v2_path, headers=binary_headers
        ),
        PROTOCOLS[3]: lambda clients, seconds: grpc_loop(server.grpc_target, PREDICT, bodies.grpc, clients, seconds),
        PROTOCOLS[4]: lambda clients, seconds: grpc_loop(
            server.grpc_target, MODEL_INFER, bodies.v2_grpc, clients, seconds
        ),
    }


def signature_of(metadata: dict):
    """The model's signature from its V2 metadata (TensorInfo's dtypes and instance shapes)."""
    from service.backends.signature import ModelSignature, TensorInfo
    from service.protocols.v2_codec import DATATYPES

    def infos(tensors: list[dict]) -> tuple[TensorInfo, ...]:
        return tuple(
            TensorInfo(
                t["name"], DATATYPES[t["datatype"]], tuple(None if size < 0 else size for size in t["shape"][1:])
            )
            for t in tensors
        )

    return ModelSignature(infos(metadata["inputs"]), infos(metadata["outputs"]))


def codec_cpu_us(bodies: Bodies, repeats: int = 5, requests: int = 2000) -> dict[str, float]:
    """Each protocol's decoding of its request and encoding of the answer, in-process: median CPU us per request.

    What the wire format alone costs the worker, without HTTP, gRPC's transport or the forward pass.
    """
    from tensorflow_serving.apis import predict_pb2

    from service.protocols import tfserving_codec, tfserving_grpc, v2_codec, v2_grpc_codec

    signature = signature_of(bodies.metadata)
    result = {
        info.name: np.zeros((1, *(size or 8 for size in info.instance_shape)), info.dtype) for info in signature.outputs
    }
    model = SimpleNamespace(name=bodies.model_name, version=1)
    header_length = str(len(bodies.v2_header))

    def rest_json():
        decoded = tfserving_codec.decode_request(bodies.rest_json, signature, 1000)
        orjson.dumps(tfserving_codec.encode_response(result, decoded.layout))

    def v2(body: bytes, length: str | None):
        return lambda: v2_codec.encode_infer_response(
            model.name, 1, v2_codec.decode_infer_request(body, length, signature, 1000), result
        )

    def grpc():
        request = predict_pb2.PredictRequest.FromString(bodies.grpc)
        decoded = tfserving_grpc.decode_predict(request, signature, 1000, 1 << 30)
        tfserving_grpc.encode_predict(decoded, result, model)

    def v2_grpc():
        decoded = v2_grpc_codec.decode_model_infer(ModelInferRequest.FromString(bodies.v2_grpc), signature, 1000)
        v2_grpc_codec.encode_model_infer(model.name, 1, decoded, result)

    codecs = (rest_json, v2(bodies.v2_json, None), v2(bodies.v2_binary, header_length), grpc, v2_grpc)
    codecs = dict(zip(PROTOCOLS, codecs, strict=True))
    medians = {}
    for name, codec in codecs.items():
        times = []
        for _ in range(repeats):
            started = time.process_time()
            for _ in range(requests):
                codec()
            times.append((time.process_time() - started) / requests * 1e6)
        medians[name] = statistics.median(times)
    return medians


def measure(server: LiveServer, runs: dict[str, Callable], clients: int, args) -> list[str]:
    """Table rows for `clients`: every protocol in each round, in alternating order."""
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in PROTOCOLS}
    for round_index in range(args.rounds):
        order = PROTOCOLS if round_index % 2 == 0 else tuple(reversed(PROTOCOLS))
        for name in order:
            cpu_before = server_cpu_seconds(server)
            load = runs[name](clients, args.duration)
            if load.errors or not load.ok:
                raise RuntimeError(f"{name}, {clients} clients: {load.errors} errors of {load.ok + load.errors}")
            cpu_ms = 1000 * (server_cpu_seconds(server) - cpu_before) / load.ok
            results[name].append(
                (load.throughput_rps, cpu_ms, load.percentile_ms(0.5), load.client_cpu_s / load.duration_s)
            )
            print(f"{clients} clients, {name}, round {round_index + 1}: {load.throughput_rps:.0f} req/s, "
                  f"{cpu_ms:.2f} ms server CPU/request, p50 {load.percentile_ms(0.5):.1f} ms", flush=True)  # fmt: skip
    baseline = results[PROTOCOLS[0]]
    rows = []
    for name in PROTOCOLS:
        runs_of = results[name]
        median = [statistics.median(run[i] for run in runs_of) for i in range(4)]
        cpu_ratio = statistics.median(run[1] / base[1] for run, base in zip(runs_of, baseline, strict=True))
        rps_ratio = statistics.median(run[0] / base[0] for run, base in zip(runs_of, baseline, strict=True))
        rows.append(
            f"| {clients} | {name} | {median[0]:.0f} | {rps_ratio:.2f} | {median[1]:.2f} | **{cpu_ratio:.2f}** "
            f"| {median[2]:.1f} | {median[3]:.2f} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="model to serve (repeatable); default heavy and demo")
    parser.add_argument("--clients", default="1,32", help="closed-loop clients, comma-separated")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each protocol per number of clients")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting of the server")
    parser.add_argument(
        "--grpc-client",
        choices=("lean", "grpcio"),
        default="lean",
        help="gRPC's clients: scripts/grpc_load.py's (as cheap per call as the HTTP one) or grpc.aio",
    )
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    sections = []
    for model in args.model or ["models/heavy.keras", "models/digits.keras"]:
        model_name = Path(model.rstrip("/")).stem
        with LiveServer({"MODEL_PATH": model, **dict(setting.split("=", 1) for setting in args.set)}) as server:
            server.wait_for_grpc(1)
            bodies = bodies_for(server, model_name)
            runs = runs_for(server, bodies, args.grpc_client)
            for name in PROTOCOLS:  # every protocol's first requests, outside the measurements
                runs[name](4, 1.0)
            rows = [
                row for clients in map(int, args.clients.split(",")) for row in measure(server, runs, clients, args)
            ]
        codecs = codec_cpu_us(bodies)
        sections.append(
            f"Model `{model}`:\n\n| clients | protocol | req/s | req/s vs REST JSON | server CPU ms/request "
            "| CPU vs REST JSON | p50 ms | client cores |\n|---|---|---|---|---|---|---|---|\n"
            + "\n".join(rows)
            + "\n\nIn-process decoding of the request and encoding of the answer, CPU per request: "
            + ", ".join(f"{name} {us:.0f} us ({us / codecs[PROTOCOLS[0]]:.2f}x)" for name, us in codecs.items())
            + "."
        )
    report = (
        f"{' '.join(args.set) or 'Default settings'}; machine: {machine_description()}. Closed loops of one instance "
        f"per request, {args.duration:g} s a run, {args.rounds} rounds, protocols in alternating order; medians, "
        "and the median of per-round ratios to TF Serving REST JSON. Clients in the bench's process (asyncio HTTP/1.1 "
        f"keep-alive; gRPC: {GRPC_CLIENTS[args.grpc_client]}, a connection per client), on the same machine.\n\n"
        + "\n\n".join(sections)
    )
    publish(report, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
