"""The API key (`serve --api-key`, or SST2DIST_API_KEY so that it stays out of `ps`): every route but /health needs
`Authorization: Bearer <key>` (text-embeddings-inference's convention); anything else answers 401 with
`WWW-Authenticate: Bearer`. The key is compared in constant time and never logged or shown."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from sst2dist.serve.protocol import ErrorBody, error_response

OPEN_PATHS = frozenset({"/health"})  # liveness probes carry no key
CHALLENGE = {"WWW-Authenticate": "Bearer"}
SCHEME = "bearerAuth"


def digest(token: bytes) -> bytes:
    # Comparing digests keeps the comparison's time independent of the key's length too.
    return hashlib.sha256(token).digest()


class BearerAuth:
    """ASGI middleware: HTTP requests to any path but /health pass only with `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app, self.expected = app, digest(api_key.encode("ascii"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        problem = self.problem(dict(scope["headers"]).get(b"authorization"))
        if problem is None:
            return await self.app(scope, receive, send)
        return await error_response(401, "unauthorized", problem, CHALLENGE)(scope, receive, send)

    def problem(self, header: bytes | None) -> str | None:
        if header is None:
            return "this server needs an API key: send the header Authorization: Bearer <key>"
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return "the Authorization header must read Bearer <key>"
        if not hmac.compare_digest(digest(token.strip()), self.expected):
            return "the API key is not valid for this server"
        return None


def document_bearer_auth(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema with the bearer scheme declared, required and answered 401 on every operation but
    /health's, so that clients (and schemathesis) know which requests need the key."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {"type": "http", "scheme": "bearer"}
    components.setdefault("schemas", {}).setdefault("ErrorBody", ErrorBody.model_json_schema())
    unauthorized = {
        "description": "no API key, or a wrong one (see WWW-Authenticate)",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    }
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{SCHEME: []}]
            operation.setdefault("responses", {})["401"] = unauthorized
    return schema
