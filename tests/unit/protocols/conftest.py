"""Fixtures of the protocols' tests: a worker serving gRPC in-process, on a free port."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from scripts.launcher import free_port
from service.app import create_app, start_grpc


@pytest.fixture
def grpc_settings(settings):
    return dataclasses.replace(settings, grpc_port=free_port())


@pytest.fixture
def served(grpc_settings, fake_model):
    """(Flask app, gRPC channel) of one worker serving both."""
    app = create_app(grpc_settings, fake_model)
    start_grpc(app)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_settings.grpc_port}")
    yield app, channel
    channel.close()
    app.extensions["model_server"].close()
