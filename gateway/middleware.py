"""The gateway's own work around every HTTP request, in one pure-ASGI layer (:class:`GatewayMiddleware`).

The concerns, applied in this order (outermost first), as the four middlewares they replace nested them:

1. **metrics**: the request is timed and counted by method, route template and status once it is done (500 when
   the app raised before answering);
2. **header lines** over ``max_headers``: 431 ``headers_too_large`` (JSON, ``Connection: close``), answered
   without the headers below (nginx in front bounds the head's bytes, not its lines); then the **request id**: the
   client's ``X-Request-ID`` (one value of the allowed characters, else 400 ``invalid_request_id``, answered
   without the headers below) or a new one; returned on every answer and kept in
   :data:`gateway.request_id.current_request_id` for the TorchServe call and the logs;
3. **security headers** on every answer; the docs page gets a policy naming its one inline script;
4. **body limit** (:class:`BodyLimit`): 413 before any parsing, a deadline for the whole body, a cap on the body
   bytes all requests hold together.

One layer instead of four because each layer costs every request a coroutine frame, a ``send`` wrapper, and one
more frame to resume at each suspension (docs/performance.md, section 3b).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    GatewayError,
    HeadersTooLarge,
    InvalidRequestId,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    error_response,
)
from gateway.metrics import Metrics
from gateway.request_id import REQUEST_ID_HEADER_BYTES, REQUEST_ID_RULE, current_request_id, request_id_of

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# Every answer but the docs page is JSON or text: nothing may load or run.
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
API_HEADERS = (*SECURITY_HEADERS, API_CSP)
DOCS_PAGE = "/docs"
DOCS_ASSETS = "/docs/assets"  # Swagger UI's script, stylesheet and icon, from the fastapi-offline package
# The docs page may load only what the gateway serves itself, plus its one inline script (by hash, added per answer).
DOCS_CSP = (
    "default-src 'none'; script-src 'self' {hashes}; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
_WITHOUT_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


class GatewayMiddleware:
    """Metrics, request id, security headers and the body limit (the module's docstring) around ``app``."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, bodies: BodyLimit, max_headers: int = 100) -> None:
        self.app = app
        self.metrics = metrics
        self.bodies = bodies
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        try:
            refused: GatewayError | None = None
            if len(scope["headers"]) > self.max_headers:
                refused = HeadersTooLarge(f"more than {self.max_headers} header lines")
            request_id = request_id_of(scope)
            if request_id is None and refused is None:
                refused = InvalidRequestId(REQUEST_ID_RULE)
            if refused is not None:

                async def send_counted(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                    await send(message)

                headers = {"Connection": "close"} if isinstance(refused, HeadersTooLarge) else None
                await error_response(refused.status, refused.message, refused.type, headers)(
                    scope, receive, send_counted
                )
                return
            assert request_id is not None
            id_header = (REQUEST_ID_HEADER_BYTES, request_id.encode())
            if scope["path"] == DOCS_PAGE:
                start: Message | None = None
                body = b""

                async def send_docs_page(message: Message) -> None:
                    """Hold the (small) page until its body is complete, then send it with its CSP."""
                    nonlocal start, body, status
                    if message["type"] == "http.response.start":
                        start = message
                        return
                    body += message.get("body", b"")
                    if message.get("more_body", False) or start is None:
                        return
                    status = start["status"]
                    headers = [*start.get("headers", []), *SECURITY_HEADERS, _docs_csp(body), id_header]
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": body})

                answer = send_docs_page
            else:

                async def send_with_headers(message: Message) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]
                        message["headers"] = [*message.get("headers", []), *API_HEADERS, id_header]
                    await send(message)

                answer = send_with_headers
            token = current_request_id.set(request_id)
            try:
                if scope["method"] in _WITHOUT_BODY:
                    await self.app(scope, receive, answer)
                else:
                    await self.bodies.call(self.app, scope, receive, answer)
            finally:
                current_request_id.reset(token)
        finally:
            self.metrics.count_request(scope, status, time.perf_counter() - started)


def _docs_csp(page: bytes) -> tuple[bytes, bytes]:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return b"content-security-policy", DOCS_CSP.format(hashes=hashes).encode()


class BodyLimit:
    """Answers 413 for a body over ``max_bytes``: at once when Content-Length says so, else while counting the
    streamed chunks. An accepted body (at most ``max_bytes``) is buffered and replayed to the app, so nothing
    parses a byte of a body that is too large. The whole body must arrive within ``timeout_s`` (else 408 and the
    connection is closed): uvicorn itself has no deadline for a request body. All requests together hold at most
    ``max_buffered`` body bytes: one that would go over it answers 503 + Retry-After (connection closed) and
    its bytes are let go at once."""

    def __init__(self, *, max_bytes: int, timeout_s: float = 30.0, max_buffered: int, retry_after_s: int) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_buffered = max_buffered
        self.retry_after_s = retry_after_s
        self.buffered = 0  # body bytes held by every request in progress

    async def call(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """``app`` with the request's body read, checked and replayed; or the refusal answered instead."""
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(PayloadTooLarge(f"the request body is over {self.max_bytes} bytes"), scope, send)
            return
        held = [0]  # this request's bytes counted in self.buffered, whatever stops the reading
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    body = await self._read(receive, held)
            except TimeoutError:
                too_slow = RequestTimeout(f"the request body did not arrive within {self.timeout_s:g} s")
                await self._refuse(too_slow, scope, send)
                return
            except _Full:
                self.buffered -= held[0]
                held[0] = 0
                busy = Unavailable(
                    "the gateway holds too many request bodies; retry later", retry_after_s=self.retry_after_s
                )
                await self._refuse(busy, scope, send)
                return
            if body is None:  # the client went away
                return
            if len(body) > self.max_bytes:
                await self._refuse(PayloadTooLarge(f"the request body is over {self.max_bytes} bytes"), scope, send)
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await app(scope, replay, send)
        finally:
            self.buffered -= held[0]

    async def _read(self, receive: Receive, held: list[int]) -> bytes | None:
        """The body, or ``None`` when the client disconnected; stops counting one chunk past ``max_bytes``."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            if self.buffered + len(chunk) > self.max_buffered:
                raise _Full
            self.buffered += len(chunk)
            held[0] += len(chunk)
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, error: GatewayError, scope: Scope, send: Send) -> None:
        """Answer ``error`` and close the connection (the rest of the body is not read)."""
        response = error_response(error.status, error.message, error.type, {**error.headers, "Connection": "close"})
        await response(scope, _nothing_more, send)


class _Full(Exception):
    """Taking the next chunk would put the buffered bytes of all requests over ``max_buffered``."""


async def _nothing_more() -> Message:
    return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
