"""Optional API keys: when API_KEYS is set, every route needs one but the health checks and docs.

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. It is compared with
every configured key in constant time (no early exit on the first differing byte, nor on
the first matching key), so response times do not reveal how much of a guess was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

from service.errors import ApiError, Forbidden, Unauthorized, WsgiApp, render, write_json

# Probes carry no credentials, and the API's description is no secret (its page must load it).
OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/docs", "/docs/"}
)
OPEN_PREFIXES = ("/docs/static/",)


def parse_api_keys(setting: str) -> tuple[bytes, ...]:
    return tuple(key.strip().encode() for key in setting.split(",") if key.strip())


class ApiKeyGuard:
    """WSGI middleware: 401 without a key, 403 with a wrong one, else the wrapped app."""

    def __init__(self, app: WsgiApp, keys: tuple[bytes, ...]):
        if not keys:
            raise ValueError("ApiKeyGuard needs at least one key")
        self._app = app
        self._keys = keys

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return self._app(environ, start_response)
        try:
            self._check(_presented_key(environ))
        except ApiError as error:
            return write_json(start_response, *render(error))
        return self._app(environ, start_response)

    def _check(self, presented: bytes | None) -> None:
        if presented is None:
            raise Unauthorized("this server needs an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
        if not self._is_known(presented):
            raise Forbidden("this API key is not valid here")

    def _is_known(self, presented: bytes) -> bool:
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched


def _presented_key(environ: dict) -> bytes | None:
    # PEP 3333 gives header values decoded as latin-1; encoding back recovers the bytes sent.
    header = environ.get("HTTP_X_API_KEY")
    if not header:
        scheme, _, credentials = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        header = credentials.strip() if scheme.lower() == "bearer" else ""
    return header.encode("latin-1") if header else None
