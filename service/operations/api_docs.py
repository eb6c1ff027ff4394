"""The API's description: `GET /openapi.json` for programs, `GET /docs` for people.

The page is Swagger UI, served from the swagger-ui-py package's own copy of its assets
rather than a CDN, so it also works on a machine without internet access.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import swagger_ui
from flask import Blueprint, Response, current_app, request

from service.operations.openapi import openapi_document
from service.web.auth import OPEN_PATHS, parse_api_keys

SWAGGER_UI_ASSETS = Path(swagger_ui.__file__).parent / "static"

blueprint = Blueprint("api_docs", __name__, static_folder=str(SWAGGER_UI_ASSETS), static_url_path="/docs/static")

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>
window.onload = () => {{ window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui"}}); }};
</script>
</body>
</html>
"""


@blueprint.get("/openapi.json")
def openapi_json():
    """The API of this server, with one served model's instance and prediction shapes: `?model=<name>`, else the
    sole model or the first configured."""
    server = current_app.extensions["model_server"]
    hosted = _documented(server)
    model = hosted.versions.latest()
    open_paths = OPEN_PATHS if parse_api_keys(server.settings.api_keys) else None
    document = openapi_document(
        model.name,
        model.version,
        model.signature,
        hosted.settings.max_request_instances,
        open_paths,
        server.settings.max_job_instances,
    )
    return Response(orjson.dumps(document), mimetype="application/json")


@blueprint.get("/docs")
@blueprint.get("/docs/")
def docs_page():
    model = _documented(current_app.extensions["model_server"])
    return Response(_PAGE.format(title=f"{model.name} model server API"), mimetype="text/html")


def _documented(server):
    """The model the document describes: `?model=<name>` (404 when not served), else the sole or first one."""
    name = request.args.get("model")
    return server.hosted(name) if name else next(iter(server.models.values()))
