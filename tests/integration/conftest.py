"""Real Gunicorn servers on free ports: each stopped when the scope that started it ends.

`start_server` is a test's own: its servers stop when the test ends. Fixtures that share a
server across tests start it with `launch_server` and stop it at their own end. What a test of the
app needs is one worker class, the default (`demo_server`, TensorFlow); what a test of the worker
needs is both (`onnx_server`: the same model as ONNX, whose workers boot in a second and hold a
quarter of the memory).
"""

from __future__ import annotations

import pytest

from scripts.launcher import LiveServer
from tests.support import DEMO_SERVER_SETTINGS


@pytest.fixture(scope="session")
def footprint_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache") / "footprints.json")


@pytest.fixture(scope="session")
def launch_server(footprint_cache, tmp_path_factory):
    """Start a server with the given settings; its starter stops it (any left running stop with the session)."""
    started = []

    def launch(**settings) -> LiveServer:
        env = {"FOOTPRINT_CACHE": footprint_cache, **settings}
        server = LiveServer(env, log_path=tmp_path_factory.mktemp("server") / "gunicorn.log").start()
        started.append(server)
        return server

    yield launch
    for server in started:
        server.stop()


@pytest.fixture
def start_server(launch_server):
    """Start a server for this test alone: stopped when the test ends."""
    started = []

    def start(**settings) -> LiveServer:
        started.append(launch_server(**settings))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def serving_grpc(server: LiveServer) -> LiveServer:
    server.wait_for_grpc(int(DEMO_SERVER_SETTINGS["WORKERS"]))
    return server


@pytest.fixture(scope="package")
def demo_server(launch_server, demo_model_path):
    """The demo model under the default worker class (gevent), two workers, HTTP and gRPC: for tests of the app."""
    server = serving_grpc(launch_server(MODEL_PATH=str(demo_model_path), **DEMO_SERVER_SETTINGS))
    yield server
    server.stop()


@pytest.fixture(scope="package", params=["gevent", "gthread"])
def onnx_server(request, launch_server, demo_onnx_path):
    """The demo model converted to ONNX, served as the demo server is, under each worker class: HTTP and gRPC."""
    settings = {**DEMO_SERVER_SETTINGS, "WORKER_CLASS": request.param}
    server = serving_grpc(launch_server(MODEL_PATH=str(demo_onnx_path), **settings))
    yield server
    server.stop()
