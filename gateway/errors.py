"""The gateway's closed set of errors and the one exception handler that renders them as ``{"error", "type"}``.

Everything a client can get wrong or TorchServe can do ends up as one of these classes (upstream failures are
translated in :func:`gateway.torchserve.translate_errors`); nothing a client sends may produce a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.request_id import current_request_id

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """Base of the closed set: a status, a stable ``type`` string and a message safe to show the client."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class InvalidInput(GatewayError):
    status = 422
    type = "invalid_input"


class InvalidRequestId(GatewayError):
    """An ``X-Request-ID`` that is not one value of the allowed characters (gateway/request_id.py)."""

    status = 400
    type = "invalid_request_id"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "payload_too_large"


class RequestTimeout(GatewayError):
    """The client did not send its whole body in time (slow-loris style); the connection is closed."""

    status = 408
    type = "request_timeout"


class NotFound(GatewayError):
    status = 404
    type = "not_found"


class ModelVersionNotFound(NotFound):
    type = "model_version_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "method_not_allowed"


class BadGateway(GatewayError):
    """TorchServe failed (5xx) or answered something the gateway cannot read."""

    status = 502
    type = "bad_gateway"


class Unavailable(GatewayError):
    """TorchServe unreachable, no worker, model not registered, key not usable: try again later."""

    status = 503
    type = "unavailable"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class UpstreamTimeout(GatewayError):
    status = 504
    type = "timeout"


_HTTP_TYPES: dict[int, type[GatewayError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    422: InvalidInput,
}

MAX_REPORTED_ERRORS = 5


def error_response(status: int, message: str, kind: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "type": kind}, status_code=status, headers=dict(headers or {}))


def describe_validation(errors: Sequence[Any]) -> str:
    """A readable summary of pydantic errors that never repeats the client's input (no ``input`` values)."""
    parts = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        loc = [str(p) for p in error.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        where = ".".join(part[:64] for part in loc) or "body"
        kind = error.get("type", "")
        if kind == "json_invalid":
            parts.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})")
        elif kind in ("model_attributes_type", "dict_type") and where == "body":
            parts.append("the body must be a JSON object sent with Content-Type: application/json")
        elif kind == "missing" and where == "body":
            parts.append("a JSON body is required")
        else:
            parts.append(f"{where}: {error.get('msg', 'invalid value')}")
    if len(errors) > MAX_REPORTED_ERRORS:
        parts.append(f"... and {len(errors) - MAX_REPORTED_ERRORS} more")
    return "; ".join(parts)


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The one exception handler (registered for every exception class the app can see)."""
    if isinstance(exc, GatewayError):
        request_id = current_request_id.get()
        if exc.status >= 500:
            log.warning(
                "request %s: %s %s -> %d %s: %s", request_id, request.method, request.url.path, exc.status, exc.type,
                exc.message,
            )  # fmt: skip
        else:  # the client's mistake: its type only (a message may quote the input)
            log.info("request %s: %s %s -> %d %s", request_id, request.method, request.url.path, exc.status, exc.type)
        return error_response(exc.status, exc.message, exc.type, exc.headers)
    if isinstance(exc, RequestValidationError):
        return error_response(InvalidInput.status, describe_validation(exc.errors()), InvalidInput.type)
    if isinstance(exc, StarletteHTTPException) and exc.status_code == 400:
        # FastAPI's own "error parsing the body" (e.g. a JSON body that is not UTF-8): the same 422 as invalid JSON.
        return error_response(InvalidInput.status, "the body is not valid JSON (not UTF-8 text)", InvalidInput.type)
    if isinstance(exc, StarletteHTTPException):
        cls = _HTTP_TYPES.get(exc.status_code)
        kind = cls.type if cls else "http_error"
        message = {
            404: "no such route (see /docs)",  # never the path: error bodies do not repeat client input
            405: f"method {request.method} not allowed here",
            413: "the request body is too large",
        }.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, kind, exc.headers)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error", GatewayError.type)
