"""TF Serving's gRPC API, served in-process on a free port; its messages built without TensorFlow, as the server
builds them (tensorflow-serving-api's own stubs call live servers: tests/integration/test_grpc_protocol.py)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import grpc
import numpy as np
import orjson
import pytest
from google.protobuf import text_format
from prometheus_client import REGISTRY

from scripts.launcher import free_port
from service import tfserving_messages as messages
from service.app import create_app, start_grpc
from service.protocols.tensor_proto import from_array
from service.protocols.tfserving_grpc import GET_MODEL_METADATA, GET_MODEL_STATUS, PREDICT, RELOAD_CONFIG
from service.settings import Settings
from tests.support import infer_document, rows


def tensor_proto(array: np.ndarray) -> messages.TensorProto:
    tensor = messages.TensorProto()
    from_array(array, tensor)
    return tensor


def array_of(tensor: messages.TensorProto) -> np.ndarray:
    """A float32 output as TensorFlow's `make_ndarray` reads it."""
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    return np.frombuffer(tensor.tensor_content, np.dtype("<f4")).reshape(shape)


def predict_request(values: list[list[float]], name: str = "fake") -> messages.PredictRequest:
    request = messages.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tensor_proto(np.array(values, np.float32)))
    return request


def method(channel, path: str, response: type):
    return channel.unary_unary(
        path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response.FromString
    )


def predict(channel, request, **options):
    return method(channel, PREDICT, messages.PredictResponse).with_call(request, timeout=10, **options)


def failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def counted(status: str, route: str = PREDICT) -> float:
    labels = {"protocol": "tfserving_grpc", "route": route, "method": "POST", "status": status}
    return REGISTRY.get_sample_value("model_server_http_requests_total", labels) or 0.0


def test_predict_answers_with_the_models_outputs_and_its_spec(served):
    _, channel = served
    response, call = predict(channel, predict_request(rows(2)), metadata=[("x-request-id", "checkout-9")])
    assert array_of(response.outputs["y"]).tolist() == (2 * np.array(rows(2), np.float32)).tolist()
    spec = response.model_spec
    assert (spec.name, spec.version.value, spec.signature_name) == ("fake", 1, "serving_default")
    trailing = dict(call.trailing_metadata())
    assert trailing["x-request-id"] == "checkout-9" and trailing["x-batch-size"] == "2"


def test_an_empty_model_name_means_the_model_served_and_output_filter_selects(served):
    _, channel = served
    request = predict_request(rows(1), name="")
    request.output_filter.append("y")
    response, _ = predict(channel, request)
    assert list(response.outputs) == ["y"]
    request.output_filter[:] = ["z"]
    error = failure(lambda: predict(channel, request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "output_filter" in error.details()


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        (lambda r: setattr(r.model_spec, "name", "other"), grpc.StatusCode.NOT_FOUND, "'other' is not served here"),
        (lambda r: r.model_spec.version.__setattr__("value", 2), grpc.StatusCode.NOT_FOUND, "no version 2"),
        (lambda r: setattr(r.model_spec, "version_label", "stable"), grpc.StatusCode.NOT_FOUND, "labelled 'stable'"),
        (lambda r: setattr(r.model_spec, "signature_name", "other"), grpc.StatusCode.INVALID_ARGUMENT, "signature"),
        (
            lambda r: r.inputs["x"].CopyFrom(tensor_proto(np.zeros((1, 3)))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DT_DOUBLE",
        ),
        (
            lambda r: r.inputs["w"].CopyFrom(r.inputs["x"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "exactly the model's ['x']",
        ),
        (
            lambda r: r.inputs["x"].CopyFrom(tensor_proto(np.zeros((101, 3), np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "at most 100",
        ),
    ],
)
def test_client_mistakes_get_the_status_code_rest_maps_them_to_and_say_what_was_wrong(served, change, code, says):
    _, channel = served
    request = predict_request(rows(1))
    change(request)
    error = failure(lambda: predict(channel, request))
    assert error.code() == code and says in error.details()


def test_a_message_that_is_not_a_predict_request_is_invalid_argument_not_internal(served):
    _, channel = served
    raw = channel.unary_unary(PREDICT)  # bytes in, bytes out
    error = failure(lambda: raw(b"\xff\xff\xff", timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid tensorflow.serving.PredictRequest" in error.details()
    assert counted("400") >= 1


def test_methods_not_served_are_unimplemented(served):
    _, channel = served
    classify = channel.unary_unary("/tensorflow.serving.PredictionService/Classify")  # bytes in, bytes out
    error = failure(lambda: classify(b"", timeout=10))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_model_metadata_is_the_signature_def_map_of_serving_default(served):
    _, channel = served
    get_metadata = method(channel, GET_MODEL_METADATA, messages.GetModelMetadataResponse)
    request = messages.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "fake"
    response = get_metadata(request, timeout=10)
    signatures = messages.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs["x"].dtype == messages.DataType.Value("DT_FLOAT")
    assert [dim.size for dim in default.inputs["x"].tensor_shape.dim] == [-1, 3]
    assert [dim.size for dim in default.outputs["y"].tensor_shape.dim] == [-1, 3]
    request.metadata_field[:] = ["graph"]
    error = failure(lambda: get_metadata(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "signature_def" in error.details()


def test_model_status_reports_the_version_available(served):
    _, channel = served
    get_status = method(channel, GET_MODEL_STATUS, messages.GetModelStatusResponse)
    request = messages.GetModelStatusRequest()
    request.model_spec.name = "fake"
    (status,) = get_status(request, timeout=10).model_version_status
    assert (status.version, type(status).State.Name(status.state)) == (1, "AVAILABLE")
    request.model_spec.name = "other"
    assert failure(lambda: get_status(request, timeout=10)).code() == grpc.StatusCode.NOT_FOUND


def test_a_full_queue_is_unavailable_with_the_reason_and_when_to_retry(served):
    app, channel = served
    batcher = app.extensions["model_server"].sole.batcher
    batcher._queued_instances, batcher._admits = batcher.max_queue, 0  # as if the queue were full
    try:
        error = failure(lambda: predict(channel, predict_request(rows(1))))
    finally:
        batcher._queued_instances, batcher._admits = 0, batcher.max_queue
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "queue is full" in error.details()
    trailing = dict(error.trailing_metadata())
    assert int(trailing["retry-after"]) >= 1
    assert int(trailing["grpc-retry-pushback-ms"]) == 1000 * int(trailing["retry-after"])


def test_the_clients_deadline_is_the_requests_deadline(served, fake_forward):
    """A call whose gRPC deadline passes while a pass holds the worker is never run, and the server knows why."""
    app, channel = served
    before = len(fake_forward.batch_sizes)  # the warm-up's
    fake_forward.gate.clear()
    fake_forward.entered.clear()
    blocker = threading.Thread(target=lambda: app.test_client().post("/predict", json={"instances": rows(1)}))
    blocker.start()
    assert fake_forward.entered.wait(10)
    expired_before = counted("504") + counted("503")
    call = method(channel, PREDICT, messages.PredictResponse)
    error = failure(lambda: call(predict_request(rows(1, start=40)), timeout=0.3))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    fake_forward.gate.set()  # the model is free again: the call, still queued, is past its deadline
    deadline = time.monotonic() + 10
    while counted("504") + counted("503") == expired_before:  # the server answers its own copy of the call
        assert time.monotonic() < deadline, "the server never gave up on the call"
        time.sleep(0.01)
    blocker.join(10)
    assert fake_forward.batch_sizes[before:] == [1], "the expired call was never run"


def test_api_keys_come_in_the_calls_metadata(grpc_settings, fake_model):
    app = create_app(dataclasses.replace(grpc_settings, api_keys="k1,k2"), fake_model)
    start_grpc(app)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_settings.grpc_port}") as channel:
            request = predict_request(rows(1))
            missing = failure(lambda: predict(channel, request))
            wrong = failure(lambda: predict(channel, request, metadata=[("authorization", "Bearer nope")]))
            response, _ = predict(channel, request, metadata=[("authorization", "Bearer k2")])
            also, _ = predict(channel, request, metadata=[("x-api-key", "k1")])
    finally:
        app.extensions["model_server"].close()
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED and "API key" in missing.details()
    assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED
    assert list(response.outputs) == list(also.outputs) == ["y"]


def test_calls_are_counted_and_logged_under_their_protocol_and_method(served, caplog):
    _, channel = served
    caplog.set_level(logging.INFO, logger="model_server.access")
    before = counted("200")
    predict(channel, predict_request(rows(3)), metadata=[("x-request-id", "r-77")])
    assert counted("200") == before + 1
    (event,) = [record for record in caplog.records if getattr(record, "event", None) == "access"]
    assert (event.protocol, event.path, event.route, event.status, event.batch_size, event.request_id) == (
        "tfserving_grpc",
        PREDICT,
        PREDICT,
        200,
        3,
        "r-77",
    )


def test_one_pass_serves_tf_serving_rest_v2_and_grpc_requests_together(served, fake_forward):
    """While a pass runs, a request of each protocol waits; the next pass serves all three."""
    app, channel = served
    before = len(fake_forward.batch_sizes)  # the warm-up's
    fake_forward.gate.clear()
    fake_forward.entered.clear()
    answers: dict[str, object] = {}

    def send(name: str, path: str, body: dict) -> None:
        answers[name] = app.test_client().post(path, data=orjson.dumps(body))

    def call_grpc() -> None:
        answers["grpc"], answers["grpc_call"] = predict(channel, predict_request(rows(1, start=20)))

    first = threading.Thread(target=send, args=("first", "/predict", {"instances": rows(1)}))
    first.start()
    assert fake_forward.entered.wait(10)
    others = [
        threading.Thread(target=send, args=("rest", "/v1/models/fake:predict", {"instances": rows(1, start=5)})),
        threading.Thread(target=send, args=("v2", "/v2/models/fake/infer", infer_document(rows(1, start=9)))),
        threading.Thread(target=call_grpc),
    ]
    for thread in others:
        thread.start()
    batcher = app.extensions["model_server"].sole.batcher
    deadline = time.monotonic() + 10
    while batcher.queue_depth < 3:
        assert time.monotonic() < deadline, "the three requests never queued"
        time.sleep(0.005)
    fake_forward.gate.set()
    for thread in [first, *others]:
        thread.join(10)
    assert fake_forward.batch_sizes[before:] == [1, 4], "three instances, padded to a compiled size"
    assert answers["rest"].headers["X-Batch-Size"] == answers["v2"].headers["X-Batch-Size"] == "3"
    assert dict(answers["grpc_call"].trailing_metadata())["x-batch-size"] == "3"
    assert answers["rest"].get_json()["predictions"] == [[10.0, 11.0, -10.0]]
    assert answers["v2"].get_json()["outputs"][0]["data"] == [18.0, 19.0, -18.0]
    assert array_of(answers["grpc"].outputs["y"]).tolist() == [[40.0, 41.0, -40.0]]


def test_a_spec_names_its_version_by_number_or_label():
    from service import tfserving_messages as messages
    from service.errors import BadRequest
    from service.protocols.tfserving_grpc import spec_target

    spec = messages.ModelSpec(name="digits")
    assert spec_target(spec) == ("digits", None, None)
    spec.version.value = 3
    assert spec_target(spec) == ("digits", 3, None)
    spec.version_label = "canary"  # one of the oneof: the number is cleared
    assert spec_target(spec) == ("digits", None, "canary")
    with pytest.raises(BadRequest, match="signature_name"):
        spec_target(messages.ModelSpec(signature_name="classify"))


def test_with_the_result_cache_each_call_gets_its_own_answer_and_a_repeat_comes_from_the_cache(
    grpc_settings, fake_model
):
    app = create_app(dataclasses.replace(grpc_settings, cache_max_bytes=1 << 20), fake_model)
    start_grpc(app)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_settings.grpc_port}") as channel:
            answers = []
            for values in (rows(1), rows(1, start=5.0), rows(1, start=5.0), rows(1)):
                response, call = predict(channel, predict_request(values))
                answers.append((array_of(response.outputs["y"]).tolist(), dict(call.trailing_metadata())))
        for (outputs, _), values in zip(
            answers, (rows(1), rows(1, start=5.0), rows(1, start=5.0), rows(1)), strict=True
        ):
            assert outputs == (2 * np.array(values, np.float32)).tolist()
        assert [trailing["x-batch-size"] for _, trailing in answers] == ["1", "1", "0", "0"]
    finally:
        app.extensions["model_server"].close()


def test_a_reloaded_config_serves_its_models_and_only_those(repository, tmp_path):
    """HandleReloadConfigRequest, guarded by API keys: the models it lists serve once loaded, the others go."""
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "triple" base_path: "repository/triple" } }')
    settings = Settings(
        model_config_file=str(config), jobs_db=str(tmp_path / "jobs.sqlite3"), model_poll_s=0,
        model_config_poll_s=0, grpc_port=free_port(), api_keys="k1",
    )  # fmt: skip
    app = create_app(settings)
    start_grpc(app)
    server = app.extensions["model_server"]
    key = [("x-api-key", "k1")]

    def reload(text: str, metadata=key):
        request = messages.ReloadConfigRequest()
        text_format.Parse(text, request.config)
        return method(channel, RELOAD_CONFIG, messages.ReloadConfigResponse).with_call(
            request, timeout=60, metadata=metadata
        )

    try:
        with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
            response, _ = reload(
                f'model_config_list {{ config {{ name: "double" base_path: "{repository / "double"}" }} }}'
            )
            assert response.status.error_code == 0 and list(server.models) == ["double"]
            answer, _ = predict(channel, predict_request([[1.0, 1.0]], "double"), metadata=key)
            assert array_of(answer.outputs["y"]).tolist() == [[2.0, 2.0]]
            invalid = failure(lambda: reload('model_config_list { config { name: "double" } }'))
            assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT and "has no base_path" in invalid.details()
            (tmp_path / "broken" / "1").mkdir(parents=True)
            (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
            broken = failure(lambda: reload(
                f'model_config_list {{ config {{ name: "broken" base_path: "{tmp_path / "broken"}" }} '
                f'config {{ name: "triple" base_path: "{repository / "triple"}" }} }}'
            ))  # fmt: skip
            assert broken.code() == grpc.StatusCode.FAILED_PRECONDITION and "broken:" in broken.details()
            assert list(server.models) == ["triple"], "the models that load serve as the config says"
            keyless = failure(lambda: reload("model_config_list { }", metadata=()))
            assert keyless.code() == grpc.StatusCode.UNAUTHENTICATED and list(server.models) == ["triple"]
    finally:
        server.close()
