"""A worker serving several models (MODEL_REPOSITORY), through Flask's test client: each routed by name on
every protocol, with its own settings and batcher, their passes in turns."""

from __future__ import annotations

import json

from tests.support import wait_until


def infer(client, path: str, values: list[list[float]]):
    return client.post(
        path, json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(values), 2], "data": values}]}
    )


def test_each_model_answers_by_its_name_on_tf_serving_and_v2_rest(many_models_app):
    client = many_models_app.test_client()
    assert client.post("/v1/models/double:predict", json={"instances": [[1, 2]]}).json == {"predictions": [[2.0, 4.0]]}
    assert client.post("/v1/models/triple:predict", json={"instances": [[1, 2]]}).json == {"predictions": [[3.0, 6.0]]}
    answer = infer(client, "/v2/models/triple/infer", [[1, 1], [2, 2]])
    assert answer.status_code == 200 and answer.json["model_name"] == "triple"
    assert answer.json["outputs"][0]["data"] == [3.0, 3.0, 6.0, 6.0]


def test_a_request_for_no_model_or_another_is_404_naming_the_models_served(many_models_app):
    client = many_models_app.test_client()
    unnamed = client.post("/predict", json={"instances": [[1, 2]]})
    assert unnamed.status_code == 404 and "must name its model" in unnamed.json["error"]
    assert "'double', 'triple'" in unnamed.json["error"]
    other = client.post("/v1/models/quadruple:predict", json={"instances": [[1, 2]]})
    assert other.status_code == 404 and "'quadruple' is not served" in other.json["error"]
    assert client.get("/v2/models/quadruple").status_code == 404


def test_status_metadata_and_the_lists_of_models_cover_each_model(many_models_app):
    client = many_models_app.test_client()
    listed = client.get("/v1/models").json["models"]
    assert [(model["name"], model["model_version_status"][0]["state"]) for model in listed] == [
        ("double", "AVAILABLE"),
        ("triple", "AVAILABLE"),
    ]
    assert client.get("/v1/models/triple").json["model_version_status"][0]["version"] == "1"
    assert client.get("/v2/models/double").json["name"] == "double"
    index = client.post("/v2/repository/index").json
    assert index == [
        {"name": "double", "version": "1", "state": "READY"},
        {"name": "triple", "version": "1", "state": "READY"},
    ]
    assert client.get("/readyz").json == {"status": "ready", "models": {"double": 1, "triple": 1}}
    stats = client.get("/stats").json
    assert set(stats["models"]) == {"double", "triple"} and "queue_depth" in stats["models"]["triple"]
    assert json.loads(client.get("/openapi.json?model=triple").data)["info"]["description"].endswith(
        "This server serves model `triple`, version 1."
    )


def test_each_model_has_its_own_settings_and_batcher_and_their_passes_take_turns(many_models_app):
    server = many_models_app.extensions["model_server"]
    double, triple = server.models["double"], server.models["triple"]
    assert (double.settings.max_queue, triple.settings.max_queue) == (64, 32)  # double's settings.env
    assert (double.batcher.max_queue, triple.batcher.max_queue) == (64, 32)
    assert double.batcher is not triple.batcher
    assert double.batcher._turns is triple.batcher._turns is not None
    assert double.batcher._turns.slots == server.settings.concurrent_batches


def test_a_full_queue_refuses_only_its_own_models_requests(many_models_app):
    client = many_models_app.test_client()
    batcher = many_models_app.extensions["model_server"].models["double"].batcher
    batcher._queued_instances = batcher.max_queue  # as if double's queue were full
    try:
        assert client.post("/v1/models/double:predict", json={"instances": [[1, 2]]}).status_code == 503
        assert client.post("/v1/models/triple:predict", json={"instances": [[1, 2]]}).status_code == 200
        assert client.get("/readyz").status_code == 200, "the worker still serves triple"
    finally:
        batcher._queued_instances = 0


def test_a_job_runs_on_the_model_it_names(many_models_app):
    client = many_models_app.test_client()
    submitted = client.post("/v1/models/triple/jobs", json={"instances": [[1, 2], [3, 4]]})
    assert submitted.status_code == 202
    job = submitted.json
    assert job["model"] == "triple"
    wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json["state"] == "done", 60, "the job is done")
    assert client.get(f"/v1/jobs/{job['id']}/result").json == {"predictions": [[3.0, 6.0], [9.0, 12.0]]}


def test_a_request_whose_model_was_let_go_of_since_its_lookup_goes_to_what_serves_the_name_now(
    many_models_app, monkeypatch
):
    server = many_models_app.extensions["model_server"]
    old, now_serving = server.models["double"], server.models["triple"]
    lookups = iter([old, now_serving])
    monkeypatch.setattr(server, "hosted", lambda name, load=True: next(lookups))
    old.versions.retire(1, 0)  # let go of between the request's lookup and its lease
    server.models = {"double": now_serving, "triple": now_serving}
    try:
        with server.lease_hosted("double", None) as (hosted, model):
            assert hosted is now_serving and model.name == "triple"
    finally:
        server.models = {"double": old, "triple": now_serving}  # each closed once at the end


def test_a_request_whose_model_is_let_go_of_while_it_runs_is_served_with_the_servers_settings(many_models_app):
    server = many_models_app.extensions["model_server"]
    double = server.models["double"]
    model = double.versions.latest()
    assert server.settings_for(model).max_queue == 64, "its own settings.env's while it serves"
    server.models = {"triple": server.models["triple"]}
    try:
        assert server.settings_for(model) is server.settings
    finally:
        server.models = {"double": double, **server.models}
