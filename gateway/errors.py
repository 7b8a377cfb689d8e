"""The gateway's closed set of errors and the one exception handler that renders them as ``{"error", "type"}``.

Everything a client can get wrong or TorchServe can do ends up as one of these classes: upstream failures are
translated at one boundary, :func:`translate_errors`, around every TorchServe call; nothing a client sends may
produce a 500.

The mapping, in one place (docs/gateway.md repeats it):

=======================================================  ======================================
TorchServe / transport                                   gateway answer
=======================================================  ======================================
connection refused / reset, connect timeout              503 ``unavailable`` + Retry-After
no free pooled connection in time                        503 ``unavailable`` + Retry-After
key file missing or key still rejected after one retry   503 ``unavailable`` + Retry-After
503 (no worker, queue full)                              503 ``unavailable`` + Retry-After
500/507 "Worker died" (killed mid-batch; restarted)     503 ``unavailable`` + Retry-After
404 for the default version (model not registered)       503 ``unavailable`` + Retry-After
404 for a pinned version                                 404 ``model_version_not_found``
413 (over TorchServe's max_request_size)                 413 ``payload_too_large``
other 4xx (the handler's 400 for a bad text)             422 ``invalid_input`` with its message
read / write timeout, 504                                504 ``timeout``
other 5xx, unreadable answer                             502 ``bad_gateway``
=======================================================  ======================================
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import httpx
import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.request_id import current_request_id
from torchserve_protocol.keys import INVALID_KEY_TYPE, KeyFileError

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 300


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


class HeadersTooLarge(GatewayError):
    """More header lines than ``max_headers`` (the edge bounds their bytes, not their number)."""

    status = 431
    type = "headers_too_large"


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


class UpstreamStatusError(Exception):
    """TorchServe answered with an error status; carries what :func:`translate_errors` needs to map it."""

    def __init__(self, response: httpx.Response, *, model: str, version: str | None) -> None:
        super().__init__(f"TorchServe answered {response.status_code}")
        self.status = response.status_code
        self.kind, self.message = _error_of(response)
        self.model = model
        self.version = version


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """``(type, message)`` of an error answer: TorchServe's ``{"code","type","message"}`` or the handler's
    ``{"error","type"}``; never more than a few hundred characters."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return "", response.text[:MAX_MESSAGE_CHARS]
    if not isinstance(body, dict):
        return "", str(body)[:MAX_MESSAGE_CHARS]
    message = body.get("error") or body.get("message") or ""
    return str(body.get("type", "")), str(message)[:MAX_MESSAGE_CHARS]


@asynccontextmanager
async def translate_errors(*, retry_after_s: int) -> AsyncIterator[None]:
    """The one boundary: every TorchServe call runs inside it and leaves it only as a :mod:`gateway.errors` error."""
    try:
        yield
    except UpstreamStatusError as exc:
        status, what = exc.status, f"model {exc.model!r}"
        if exc.kind == INVALID_KEY_TYPE:
            raise Unavailable("TorchServe rejected the gateway's key", retry_after_s=retry_after_s) from exc
        if status == 404 and exc.version is not None:
            raise ModelVersionNotFound(f"{what} has no version {exc.version!r}") from exc
        if status == 404:
            raise Unavailable(f"{what} is not registered in TorchServe", retry_after_s=retry_after_s) from exc
        if status == 413:
            raise PayloadTooLarge(f"TorchServe refused the request as too large: {exc.message}") from exc
        if status in (503, 507) or "Worker died" in (exc.message or ""):  # transient: TorchServe starts a new one
            raise Unavailable(f"{what} cannot serve now: {exc.message}", retry_after_s=retry_after_s) from exc
        if status == 504:
            raise UpstreamTimeout(f"{what} did not answer in time: {exc.message}") from exc
        if 400 <= status < 500:
            raise InvalidInput(exc.message or f"TorchServe refused the input ({status})") from exc
        raise BadGateway(f"TorchServe failed ({status}): {exc.message}") from exc
    except KeyFileError as exc:  # the message names a path: logged, not answered
        log.warning("%s", exc)
        raise Unavailable("TorchServe's key file cannot be read yet", retry_after_s=retry_after_s) from exc
    except httpx.PoolTimeout as exc:
        raise Unavailable("the gateway is saturated: no free connection", retry_after_s=retry_after_s) from exc
    except httpx.ConnectTimeout as exc:
        raise Unavailable("TorchServe is not reachable (connect timeout)", retry_after_s=retry_after_s) from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout("TorchServe did not answer in time") from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:  # refused, reset, closed mid-answer
        raise Unavailable(f"TorchServe is not reachable ({type(exc).__name__})", retry_after_s=retry_after_s) from exc
    except httpx.HTTPError as exc:
        raise BadGateway(f"TorchServe call failed ({type(exc).__name__})") from exc


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
