"""API keys: 401 without one, 403 with a wrong one, health checks and docs open, the document says so."""

from __future__ import annotations

import dataclasses

import pytest
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug.test import EnvironBuilder

from service.app import create_app
from service.web.auth import parse_api_keys


@pytest.fixture
def keyed_client(settings, fake_model):
    app = create_app(dataclasses.replace(settings, api_keys="alpha-key, beta-key"), fake_model)
    yield app.test_client()
    app.extensions["model_server"].close()


def test_keys_are_parsed_from_a_comma_separated_setting():
    assert parse_api_keys(" a , b,,") == (b"a", b"b")
    assert parse_api_keys("") == ()


@pytest.mark.parametrize(
    "headers", [{"Authorization": "Bearer alpha-key"}, {"X-API-Key": "beta-key"}, {"Authorization": "bearer beta-key"}]
)
def test_a_valid_key_is_served(keyed_client, make_rows, headers):
    assert keyed_client.post("/predict", json={"instances": make_rows(1)}, headers=headers).status_code == 200
    assert keyed_client.get("/metrics", headers=headers).status_code == 200


def test_no_key_gets_401_with_a_json_error_and_a_challenge(keyed_client, make_rows):
    for answer in (keyed_client.post("/predict", json={"instances": make_rows(1)}), keyed_client.get("/stats")):
        assert answer.status_code == 401 and "API key" in answer.json["error"]
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert keyed_client.get("/stats", headers={"Authorization": "Basic alpha-key"}).status_code == 401


@pytest.mark.parametrize("wrong", ["alpha-ke", "alpha-keyy", "beta-key,alpha-key", "ALPHA-KEY", "é"])
def test_a_wrong_key_gets_403(keyed_client, make_rows, wrong):
    answer = keyed_client.post("/predict", json={"instances": make_rows(1)}, headers={"X-API-Key": wrong})
    assert answer.status_code == 403 and answer.json["error"] == "this API key is not valid here"


def test_health_checks_and_docs_stay_open(keyed_client):
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/docs/"):
        assert keyed_client.get(path).status_code == 200, path
    assert keyed_client.get("/docs/static/swagger-ui.css").status_code == 200
    assert keyed_client.get("/v2/models/fake").status_code == 401, "V2 metadata is not a probe: it needs a key"


def test_without_keys_nothing_is_asked(client, make_rows):
    assert client.post("/predict", json={"instances": make_rows(1)}).status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json["components"]


def test_the_document_describes_the_keys_and_the_refusals(keyed_client, make_rows):
    document = keyed_client.get("/openapi.json").json
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert document["paths"]["/healthz"]["get"]["security"] == []
    openapi = OpenAPI.from_dict(document)
    for headers, status in (({}, 401), ({"X-API-Key": "nope"}, 403), ({"X-API-Key": "alpha-key"}, 200)):
        answer = keyed_client.post("/predict", json={"instances": make_rows(1)}, headers=headers)
        assert answer.status_code == status
        request = EnvironBuilder(path="/predict", method="POST", json={"instances": make_rows(1)}, headers=headers)
        openapi.validate_response(WerkzeugOpenAPIRequest(request.get_request()), WerkzeugOpenAPIResponse(answer))
