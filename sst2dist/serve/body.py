"""Request bodies as the classify routes expect them: read whole before FastAPI parses them, within --max-payload
(checked while streaming, whatever Content-Length says), UTF-8, and handed on as JSON whatever their Content-Type
(`curl -d` sends application/x-www-form-urlencoded)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sst2dist.serve.protocol import ServeError, error_response

logger = logging.getLogger("sst2dist.serve")


class JsonBody:
    """ASGI middleware for POSTs to `paths`: a body over `max_payload` answers 413, one that is empty or not UTF-8
    answers 400; any other goes on with Content-Type: application/json for FastAPI to parse and validate."""

    def __init__(self, app: ASGIApp, max_payload: int, paths: Collection[str]):
        self.app, self.max_payload, self.paths = app, max_payload, frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        try:
            body = await read_body(Request(scope, receive), self.max_payload)
        except ClientDisconnect:  # counted as 499 by ObserveRequests: no answer was sent
            logger.info("client closed the connection while sending its body")
            return None
        except asyncio.CancelledError:  # shutting down, uvicorn stopped waiting for the rest of the body
            message = "the server shut down before the request body arrived: retry it"
            await error_response(503, "unavailable", message, {"Retry-After": "1"})(scope, receive, send)
            raise
        except ServeError as err:
            return await error_response(err.status, err.error_type, err.message, err.headers)(scope, receive, send)
        headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        return await self.app(scope, replay(body, receive), send)


async def read_body(request: Request, max_payload: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_payload:
        raise payload_too_large(int(declared), max_payload)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_payload:
            raise payload_too_large(len(body), max_payload)
    if not body:
        raise ServeError(400, "bad_request", 'the body is empty: send a JSON object such as {"inputs": "some text"}')
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ServeError(
            400, "bad_request", f"the body is not valid UTF-8 (byte {err.start}): send UTF-8 JSON"
        ) from None
    return bytes(body)


def payload_too_large(size: int, limit: int) -> ServeError:
    return ServeError(
        413, "payload_too_large", f"the body has {size}+ bytes, over the limit of {limit} (--max-payload)"
    )


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then waits on the client (for its disconnect) as before."""
    sent = False

    async def next_message() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return next_message
