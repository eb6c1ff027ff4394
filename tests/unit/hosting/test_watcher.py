"""A worker's models kept in line with its repository or model config, and with the repository APIs: an app
without Gunicorn whose watcher looks when the test says (`look`), its thread stopped."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.app import create_app
from service.backends.base import ModelInputs, ModelLoadError
from service.hosting import watcher
from service.settings import Settings
from service.sizing import placement as placement_module
from service.sizing.planner import WorkerPlacement
from tests.support import write_scaling_onnx

TRIPLE_CONFIG = 'model_config_list { config { name: "triple" base_path: "repository/triple" } }'


def served_app(tmp_path, **settings):
    app = create_app(
        Settings(
            jobs_db=str(tmp_path / "jobs.sqlite3"),
            batch_policy="fixed",
            max_batch_size=8,
            model_poll_s=0,
            model_config_poll_s=0,
            **settings,
        )
    )
    server = app.extensions["model_server"]
    server.repository.stop(10)  # the test looks when it says
    return app, server


@pytest.fixture
def watched(repository, tmp_path):
    """(app, its ModelServer) serving `repository`'s models."""
    app, server = served_app(tmp_path, model_repository=str(repository))
    yield app, server
    server.close()


def predict(client, name: str, rows=((1.0, 2.0),)):
    return client.post(f"/v1/models/{name}:predict", json={"instances": [list(row) for row in rows]})


def test_a_model_added_serves_and_the_others_are_not_touched(watched, repository):
    app, server = watched
    double, triple = server.models["double"], server.models["triple"]
    write_scaling_onnx(repository / "quadruple" / "1" / "model.onnx", 4.0)
    server.repository.look()
    assert list(server.models) == ["double", "quadruple", "triple"]
    assert (server.models["double"], server.models["triple"]) == (double, triple), "no reload of the others"
    assert predict(app.test_client(), "quadruple").json == {"predictions": [[4.0, 8.0]]}
    assert predict(app.test_client(), "double").json == {"predictions": [[2.0, 4.0]]}


def test_a_model_removed_answers_what_it_took_then_is_let_go_of(watched, repository):
    app, server = watched
    double = server.models["double"]
    shutil.rmtree(repository / "double")
    with server.lease("double", None) as model:  # a request in flight
        look = threading.Thread(target=server.repository.look)
        look.start()
        look.join(0.5)
        assert look.is_alive(), "letting go waits for the request in flight"
        assert list(server.models) == ["triple"], "and nothing new is routed to it meanwhile"
        answered = double.batcher.submit(ModelInputs(model, {"x": np.ones((1, 2), np.float32)})).wait(30)
        assert answered.result["y"].tolist() == [[2.0, 2.0]], "its batcher still runs what it took"
    look.join(30)
    assert not look.is_alive() and double.versions.get(1).model is None
    answer = predict(app.test_client(), "double")
    assert answer.status_code == 404 and "'triple'" in answer.json["error"]


def test_a_model_whose_settings_changed_is_replaced_and_the_others_kept(watched, repository):
    _, server = watched
    double, triple = server.models["double"], server.models["triple"]
    (repository / "double" / "settings.env").write_text("MAX_QUEUE=16\n")
    server.repository.look()
    assert server.models["double"] is not double and server.models["double"].settings.max_queue == 16
    assert double.versions.get(1).model is None and server.models["triple"] is triple


def test_a_broken_model_is_reported_and_serves_once_its_files_are_fixed(repository, tmp_path):
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    app, server = served_app(tmp_path, model_repository=str(repository))
    try:
        client = app.test_client()
        assert list(server.models) == ["double", "triple"], "the others serve"
        answer = predict(client, "broken")
        assert answer.status_code == 404 and "'broken' is not served:" in answer.json["error"]
        index = client.post("/v2/repository/index").json
        assert index[0]["name"] == "broken" and index[0]["state"] == "UNAVAILABLE" and index[0]["reason"]
        assert client.get("/v1/models").json["unavailable"]["broken"]
        server.repository.look()
        assert "broken" not in server.models, "not tried again while its files are as they were"
        write_scaling_onnx(repository / "broken" / "1" / "model.onnx", 5.0)
        server.repository.look()
        assert predict(client, "broken").json == {"predictions": [[5.0, 10.0]]} and server.unavailable == {}
    finally:
        server.close()


def test_a_worker_with_no_model_that_loads_does_not_start(tmp_path):
    (tmp_path / "repository" / "broken" / "1").mkdir(parents=True)
    (tmp_path / "repository" / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match=r"no configured model serves.*broken"):
        served_app(tmp_path, model_repository=str(tmp_path / "repository"))


def test_a_config_file_that_does_not_parse_changes_nothing(repository, tmp_path):
    config = tmp_path / "models.config"
    config.write_text(TRIPLE_CONFIG)
    _, server = served_app(tmp_path, model_config_file=str(config))
    try:
        triple = server.models["triple"]
        config.write_text("model_config_list { config { name: ")
        server.repository.look()
        assert server.models == {"triple": triple}
        config.write_text(TRIPLE_CONFIG.replace(" }", ' } config { name: "double" base_path: "repository/double" }', 1))
        server.repository.look()
        assert list(server.models) == ["triple", "double"] and server.models["triple"] is triple
    finally:
        server.close()


def test_unload_and_load_through_the_repository_api(watched):
    app, server = watched
    client = app.test_client()
    assert client.post("/v2/repository/models/double/unload").status_code == 200
    assert predict(client, "double").status_code == 404 and list(server.models) == ["triple"]
    index = client.post("/v2/repository/index").json
    assert {"name": "double", "state": "UNAVAILABLE", "reason": "unloaded through the repository API"} in index
    server.repository.look()
    assert "double" not in server.models, "an unloaded model stays unloaded whatever the files say"
    assert client.post("/v2/repository/models/double/load", json={}).status_code == 200
    assert predict(client, "double").json == {"predictions": [[2.0, 4.0]]}
    assert "model_repository" in client.get("/v2").json["extensions"]


def test_the_repository_api_says_what_was_wrong(watched, tmp_path, fake_model, settings):
    app, _ = watched
    client = app.test_client()
    unknown = client.post("/v2/repository/models/resnet/load")
    assert unknown.status_code == 404 and "not in the model repository" in unknown.json["error"]
    assert client.post("/v2/repository/models/resnet/unload").status_code == 404
    override = client.post("/v2/repository/models/double/load", json={"parameters": {"config": "{}"}})
    assert override.status_code == 400 and "['config'] are not supported" in override.json["error"]
    assert client.post("/v2/repository/models/double/load", data=b"{").status_code == 400
    assert client.post("/v2/repository/models/double/load", json={"parameters": {}, "x": 1}).status_code == 400
    not_bool = client.post("/v2/repository/models/double/unload", json={"parameters": {"unload_dependents": 1}})
    assert not_bool.status_code == 400 and "true or false" in not_bool.json["error"]
    unload = client.post("/v2/repository/models/double/unload", json={"parameters": {"unload_dependents": True}})
    assert unload.status_code == 200
    one_model = create_app(settings, fake_model)
    try:
        answer = one_model.test_client().post("/v2/repository/models/fake/unload")
        assert answer.status_code == 409 and "needs MODEL_REPOSITORY or MODEL_CONFIG_FILE" in answer.json["error"]
    finally:
        one_model.extensions["model_server"].close()


def test_a_model_that_fails_to_load_on_request_is_409_with_its_error(watched, repository):
    app, server = watched
    client = app.test_client()
    client.post("/v2/repository/models/double/unload")
    (repository / "double" / "1" / "model.onnx").write_bytes(b"broken now")
    answer = client.post("/v2/repository/models/double/load")
    assert answer.status_code == 409 and "'double' does not load" in answer.json["error"]
    assert list(server.models) == ["triple"]


def test_the_other_workers_follow_a_change_at_their_next_look(repository, tmp_path):
    first, first_server = served_app(tmp_path, model_repository=str(repository))
    second, second_server = served_app(tmp_path, model_repository=str(repository))  # the same server's other worker
    try:
        assert first.test_client().post("/v2/repository/models/double/unload").status_code == 200
        assert list(second_server.models) == ["double", "triple"]
        second_server.repository.look(read_files=False)
        assert list(second_server.models) == ["triple"]
        _, restarted = served_app(tmp_path, model_repository=str(repository))  # a worker started since
        assert list(restarted.models) == ["triple"], "it applies the record from its start"
        restarted.close()
        assert second.test_client().post("/v2/repository/models/double/load").status_code == 200
        first_server.repository.look(read_files=False)
        assert list(first_server.models) == ["double", "triple"]
    finally:
        first_server.close()
        second_server.close()


@pytest.fixture
def on_demand(repository, tmp_path, monkeypatch):
    """(app, server) with three models of 1 MiB each (as measured) and room for two (MODEL_MEMORY_MB=2)."""
    write_scaling_onnx(repository / "quadruple" / "1" / "model.onnx", 4.0)
    monkeypatch.setattr(watcher, "measured_size", lambda settings: 2**20)
    app, server = served_app(tmp_path, model_repository=str(repository), model_memory_mb=2)
    yield app, server
    server.close()


def counted(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(f"model_server_on_demand_{name}_total", {"model": model}) or 0.0


def test_models_load_on_their_first_request_and_the_least_recently_used_make_room(on_demand):
    app, server = on_demand
    client = app.test_client()
    assert list(server.models) == ["double", "quadruple"], "at start, the first that fit, in the configured order"
    index = {entry["name"]: entry for entry in client.post("/v2/repository/index").json}
    assert index["triple"]["state"] == "UNAVAILABLE" and "loads on its first request" in index["triple"]["reason"]
    assert client.get("/v1/models/triple").status_code == 404, "a status does not load it"
    loads, evictions, hits = counted("loads", "triple"), counted("evictions", "double"), counted("hits", "quadruple")
    assert predict(client, "double").status_code == 200
    assert predict(client, "quadruple").status_code == 200  # now double is the least recently used
    loaded = predict(client, "triple")
    assert loaded.json == {"predictions": [[3.0, 6.0]]} and loaded.headers["X-Model-Loaded-On-Demand"] == "1"
    assert set(server.models) == {"quadruple", "triple"}
    assert "X-Model-Loaded-On-Demand" not in predict(client, "triple").headers
    assert (counted("loads", "triple"), counted("evictions", "double")) == (loads + 1, evictions + 1)
    assert counted("hits", "quadruple") == hits + 1
    assert predict(client, "double").json == {"predictions": [[2.0, 4.0]]}, "and back when asked for"
    assert set(server.models) == {"triple", "double"}


def test_a_probe_of_a_model_that_loads_on_demand_says_ready_without_loading_it(on_demand):
    app, server = on_demand
    client = app.test_client()
    loads = counted("loads", "triple")
    assert client.get("/v2/models/triple/ready").status_code == 200
    assert "triple" not in server.models and counted("loads", "triple") == loads, "a probe of each would thrash"
    assert client.get("/v2/models/nonesuch/ready").status_code == 404
    assert client.post("/v2/repository/models/triple/unload").status_code == 200
    assert client.get("/v2/models/triple/ready").status_code == 404, "unloaded through the API: not ready"


def test_a_model_that_failed_to_load_on_demand_is_not_ready_until_its_files_change(on_demand, repository):
    app, _ = on_demand
    client = app.test_client()
    good = (repository / "triple" / "1" / "model.onnx").read_bytes()
    (repository / "triple" / "1" / "model.onnx").write_bytes(b"not ONNX")
    assert predict(client, "triple").status_code == 404
    assert client.get("/v2/models/triple/ready").status_code == 404, "it failed as its files are"
    (repository / "triple" / "1" / "model.onnx").write_bytes(good)
    assert client.get("/v2/models/triple/ready").status_code == 200, "its files changed: it may load"
    assert predict(client, "triple").json == {"predictions": [[3.0, 6.0]]}


def test_a_model_with_requests_in_flight_is_not_unloaded_and_the_load_is_refused_until_one_is_idle(on_demand):
    app, server = on_demand
    client = app.test_client()
    with server.lease("double", None), server.lease("quadruple", None):
        refused = predict(client, "triple")
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "requests in flight" in refused.json["error"] and set(server.models) == {"double", "quadruple"}
    assert predict(client, "triple").status_code == 200


def test_the_plans_budget_for_models_makes_the_worker_load_them_on_demand(repository, tmp_path, monkeypatch):
    """Under Gunicorn the budget is the placement's (the planner's, service/sizing/planner.py), not the setting's."""
    monkeypatch.setattr(watcher, "measured_size", lambda settings: 2**20)
    placement = WorkerPlacement(0, None, None, 1, 1, model_memory_bytes=2**20)  # room for one of the two
    monkeypatch.setattr(placement_module, "_this_worker_placement", placement)
    app, server = served_app(tmp_path, model_repository=str(repository))
    try:
        assert server.repository.loads_on_demand and list(server.models) == ["double"]
        assert predict(app.test_client(), "triple").headers["X-Model-Loaded-On-Demand"] == "1"
        assert list(server.models) == ["triple"]
    finally:
        server.close()
