"""The OpenAPI document: a valid 3.1 document, every route in it, and real answers that match it."""

from __future__ import annotations

import pytest
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_spec_validator import validate
from werkzeug.test import EnvironBuilder

from service.backends.signature import ModelSignature, TensorInfo
from service.operations.openapi import openapi_document
from service.protocols import PROTOCOLS
from service.web.access import route_template


@pytest.fixture
def document(client) -> dict:
    return client.get("/openapi.json").json


def test_the_document_is_valid_openapi_3_1(document):
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_every_route_is_documented_and_every_documented_path_exists(app, document):
    rules = [rule for rule in app.url_map.iter_rules() if not rule.endpoint.endswith("static")]  # the page's assets
    served = {route_template(rule.rule).rstrip("/") or "/" for rule in rules}
    served |= {route for protocol in PROTOCOLS for route in protocol.INFERENCE_ROUTES}
    assert served == set(document["paths"])


def test_the_model_fills_in_instances_predictions_and_limits(document, settings):
    schemas = document["components"]["schemas"]
    float32 = {"type": "number", "minimum": -3.4028234663852886e38, "maximum": 3.4028234663852886e38}
    three_numbers = {"type": "array", "items": float32, "minItems": 3, "maxItems": 3}
    assert schemas["Instance"] == three_numbers and schemas["Prediction"] == three_numbers
    most = settings.max_request_instances  # a request may hold more than a batch: it is split
    assert schemas["ColumnarInputs"] == {"type": "array", "minItems": 1, "maxItems": most, "items": three_numbers}
    assert document["components"]["parameters"]["ModelName"]["schema"] == {"enum": ["fake"]}


def test_several_inputs_are_objects_keyed_by_name():
    signature = ModelSignature(
        inputs=(TensorInfo("image", "uint8", (2, None)), TensorInfo("flag", "bool", ())),
        outputs=(TensorInfo("label", "string", ()),),
    )
    schemas = openapi_document("m", 3, signature, 4)["components"]["schemas"]
    assert schemas["Instance"] == {
        "type": "object",
        "required": ["image", "flag"],
        "additionalProperties": False,
        "properties": {
            "image": {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
            },
            "flag": {"type": "boolean"},
        },
    }
    assert schemas["Prediction"] == {"type": "string"}


def test_docs_page_is_served_with_its_assets_locally(client):
    page = client.get("/docs/")
    assert page.status_code == 200 and "text/html" in page.content_type
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html and "https://" not in html.split("<body")[0]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/predict", {"instances": [[1, 2, 3]]}),
        ("POST", "/v1/models/fake:predict", {"inputs": [[1, 2, 3], [4, 5, 6]]}),
        ("POST", "/v1/models/fake/versions/1:predict", {"instances": [[1, 2, 3]]}),
        ("POST", "/predict", {"instances": [[1, 2]]}),
        ("POST", "/predict", {"instances": [[1, 2, 3]] * 9}),
        ("POST", "/v1/models/other:predict", {"instances": [[1, 2, 3]]}),
        ("GET", "/v1/models/fake", None),
        ("GET", "/v1/models/fake/versions/1/metadata", None),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/stats", None),
        ("GET", "/metrics", None),
    ],
)
def test_real_answers_match_the_document(client, document, method, path, body):
    answer = client.open(path, method=method, json=body)
    request = EnvironBuilder(path=path, method=method, json=body).get_request()  # the app read the original's body
    OpenAPI.from_dict(document).validate_response(WerkzeugOpenAPIRequest(request), WerkzeugOpenAPIResponse(answer))
