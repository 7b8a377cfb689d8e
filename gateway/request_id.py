"""``X-Request-ID``: taken from the client when it is 1-128 characters of ``A-Z a-z 0-9 . _ : -`` (anything else
answers 400 ``invalid_request_id``), else created (32 hex digits). It is returned on every answer, sent to TorchServe
with the inference request, and written in the gateway's log line of a failed request (never the text), so one
request can be followed across the two processes."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_HEADER = REQUEST_ID_HEADER.lower().encode()
current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = [value for name, value in scope.get("headers", []) if name == _HEADER]
        if len(given) > 1 or (given and not REQUEST_ID_PATTERN.match(given[0])):
            message = f"{REQUEST_ID_HEADER} must be one value of 1-128 characters A-Z a-z 0-9 . _ : -"
            from gateway.errors import InvalidRequestId, error_response  # errors imports this module's context var

            response = error_response(InvalidRequestId.status, message, InvalidRequestId.type)
            await response(scope, receive, send)
            return
        request_id = given[0].decode() if given else uuid.uuid4().hex
        token = current_request_id.set(request_id)
        header = (_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
