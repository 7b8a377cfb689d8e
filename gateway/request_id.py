"""``X-Request-ID``: taken from the client when it is 1-128 characters of ``A-Z a-z 0-9 . _ : -`` (anything else
answers 400 ``invalid_request_id``), else created (32 hex digits). It is returned on every answer, sent to TorchServe
with the inference request, and written in the gateway's log line of a failed request (never the text), so one
request can be followed across the two processes. Applied by :class:`gateway.middleware.GatewayMiddleware`, which
answers a refused id through the error boundary (:class:`gateway.errors.InvalidRequestId`): this module only states
the rule, so the errors (which log the current id) can import it."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.types import Scope

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.lower().encode()
REQUEST_ID_PATTERN = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID_RULE = f"{REQUEST_ID_HEADER} must be one value of 1-128 characters A-Z a-z 0-9 . _ : -"
current_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def request_id_of(scope: Scope) -> str | None:
    """The request's id: the client's, else a new one; ``None`` when the client sent one that is not acceptable
    (twice, or not 1-128 of the allowed characters)."""
    given = [value for name, value in scope.get("headers", []) if name == REQUEST_ID_HEADER_BYTES]
    if not given:
        return uuid.uuid4().hex
    if len(given) > 1 or not REQUEST_ID_PATTERN.match(given[0]):
        return None
    return given[0].decode()
