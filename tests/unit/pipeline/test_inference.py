"""The way of an inference request: its deadline (the rest of the way is tested through the app, in test_app.py)."""

from __future__ import annotations

import dataclasses

import pytest

from service.errors import BadRequest
from service.pipeline.inference import request_timeout_s


def test_a_client_deadline_is_capped_by_the_servers(settings):
    assert request_timeout_s(settings, None) is None
    assert request_timeout_s(settings, "250") == 0.25
    assert request_timeout_s(dataclasses.replace(settings, request_timeout_ms=200), "250") == 0.2
    with pytest.raises(BadRequest, match="positive number"):
        request_timeout_s(settings, "-1")
