"""The one table every protocol answers errors by: what each failure becomes, and what it counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from service.backends.base import InputRejected
from service.batching.admission import DeadlineUnreachable
from service.batching.requests import BatcherClosed, DeadlineExceeded, QueueFull
from service.errors import ApiError, BadRequest, render
from service.pipeline.answers import NotReady, api_error_for, forward_pass_failures


@pytest.mark.parametrize(
    ("error", "reason", "retry_after"),
    [
        (QueueFull("16 instances are already waiting", 2.5), "queue_full", "3"),
        (DeadlineUnreachable("an answer would take about 900 ms", 0.2), "deadline_unreachable", "1"),
        (BatcherClosed(), "shutting_down", "1"),
        (NotReady(), "not_ready", "1"),
    ],
)
def test_refusals_are_503_with_retry_after_counted_under_their_reason(error, reason, retry_after):
    counted: list[str] = []
    server = SimpleNamespace(refusals=SimpleNamespace(refused=counted.append))
    answer = api_error_for(error, server)
    assert (answer.status, answer.reason, answer.headers["Retry-After"]) == (503, reason, retry_after)
    assert counted == [reason], "counted for the metrics and the once-a-second summary"


def test_what_the_model_or_the_clock_refused_is_422_or_504():
    assert api_error_for(InputRejected("shape [1,3] is not [1,4]")).status == 422
    expired = api_error_for(DeadlineExceeded("its deadline passed after 600 ms in the queue"))
    assert expired.status == 504 and "600 ms" in expired.message


def test_flasks_http_errors_keep_their_status_and_allowed_methods():
    assert api_error_for(NotFound()).status == 404
    refused = api_error_for(MethodNotAllowed(valid_methods=["GET"]))
    assert refused.status == 405 and refused.headers == {"Allow": "GET"}


def test_anything_else_is_a_500_that_names_only_its_type(caplog):
    answer = api_error_for(KeyError("secret detail"))
    assert answer.status == 500 and answer.message == "internal error: KeyError"
    assert "unexpected error" in caplog.text, "logged with its traceback for the operator"


def test_a_failed_pass_is_a_500_naming_its_cause_and_table_errors_pass_through():
    expected = "the forward pass failed: FloatingPointError: overflow"
    with pytest.raises(ApiError, match=expected) as failed, forward_pass_failures():
        raise FloatingPointError("overflow in layer 3")
    assert failed.value.status == 500
    for passed in (InputRejected("bad shape"), QueueFull("full", 1.0), BadRequest("bad body")):
        with pytest.raises(type(passed)), forward_pass_failures():
            raise passed


def test_the_renderer_writes_every_error_as_json():
    status, body, headers = render(BadRequest("send 'instances' or 'inputs'"))
    assert (status, body, headers) == (400, b"{\"error\":\"send 'instances' or 'inputs'\"}", {})
