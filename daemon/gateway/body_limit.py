"""Refuses request bodies over a size limit with 413, before any of it reaches a route.

Pure ASGI (not BaseHTTPMiddleware): it must see chunked bodies without a Content-Length as well,
and must not buffer streaming responses. The body is read whole before the app runs and then
handed on: refusing from inside the app's own read does not work, since FastAPI turns any
exception raised while it parses a body into a 400.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _body(max_bytes: int) -> bytes:
    message = f"Request body larger than {max_bytes} bytes (gateway.max_request_bytes)."
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "too_large"}
    return json.dumps({"error": error}).encode()


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        body = _body(self.max_bytes)
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return
        # The Content-Length may be absent (chunked) or understate what follows: count.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body was complete; nobody to answer
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        whole: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            # The body once, then the connection's own messages (a disconnect ends a stream).
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()

        await self.app(scope, replay, send)
