"""Real Gunicorn servers on free ports, started once per session and stopped at the end."""

from __future__ import annotations

import pytest

from scripts.launcher import LiveServer
from tests.support import DEMO_SERVER_SETTINGS


@pytest.fixture(scope="session")
def footprint_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache") / "footprints.json")


@pytest.fixture(scope="session")
def start_server(footprint_cache, tmp_path_factory):
    """Start a server with the given settings; every server started is stopped after the session."""
    started = []

    def start(**settings) -> LiveServer:
        env = {"FOOTPRINT_CACHE": footprint_cache, **settings}
        server = LiveServer(env, log_path=tmp_path_factory.mktemp("server") / "gunicorn.log").start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session", params=["gthread", "gevent"])
def demo_server(request, start_server, demo_model_path) -> LiveServer:
    """The demo model under each worker class, two workers each, both serving HTTP and gRPC."""
    server = start_server(MODEL_PATH=str(demo_model_path), WORKER_CLASS=request.param, **DEMO_SERVER_SETTINGS)
    server.wait_for_grpc(int(DEMO_SERVER_SETTINGS["WORKERS"]))
    return server


@pytest.fixture(scope="session", params=["gthread", "gevent"])
def onnx_server(request, start_server, demo_onnx_path) -> LiveServer:
    """The demo model converted to ONNX, served as the demo server is: each worker class, HTTP and gRPC."""
    server = start_server(MODEL_PATH=str(demo_onnx_path), WORKER_CLASS=request.param, **DEMO_SERVER_SETTINGS)
    server.wait_for_grpc(int(DEMO_SERVER_SETTINGS["WORKERS"]))
    return server
