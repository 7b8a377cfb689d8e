"""Two small pure-ASGI middlewares: the request body byte limit (413 before any parsing) and security headers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, PayloadTooLarge, RequestTimeout, Unavailable, error_response

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# Every answer but the docs page is JSON or text: nothing may load or run.
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
DOCS_PAGE = "/docs"
DOCS_ASSETS = "/docs/assets"  # Swagger UI's script, stylesheet and icon, from the fastapi-offline package
# The docs page may load only what the gateway serves itself, plus its one inline script (by hash, added per answer).
DOCS_CSP = (
    "default-src 'none'; script-src 'self' {hashes}; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


class BodyLimitMiddleware:
    """Answers 413 for a body over ``max_bytes``: at once when Content-Length says so, else while counting the
    streamed chunks. An accepted body (at most ``max_bytes``) is buffered and replayed to the app, so nothing
    parses a byte of a body that is too large. The whole body must arrive within ``timeout_s`` (else 408 and the
    connection is closed): uvicorn itself has no deadline for a request body. All requests together hold at most
    ``max_buffered`` body bytes: one that would go over it answers 503 + Retry-After (connection closed) and
    its bytes are let go at once."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, timeout_s: float = 30.0, max_buffered: int, retry_after_s: int
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_buffered = max_buffered
        self.retry_after_s = retry_after_s
        self.buffered = 0  # body bytes held by every request in progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(PayloadTooLarge(f"the request body is over {self.max_bytes} bytes"), scope, send)
            return
        held = [0]
        try:
            await self._buffered(scope, receive, send, held)
        finally:
            self.buffered -= held[0]

    async def _buffered(self, scope: Scope, receive: Receive, send: Send, held: list[int]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._read(receive, held)
        except TimeoutError:
            await self._refuse(
                RequestTimeout(f"the request body did not arrive within {self.timeout_s:g} s"), scope, send
            )
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

        await self.app(scope, replay, send)

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


class SecurityHeadersMiddleware:
    """Adds conservative security headers to every HTTP response: ``default-src 'none'`` everywhere but the docs page,
    whose policy allows the gateway's own assets and exactly the inline scripts the page carries (their SHA-256)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] == DOCS_PAGE:
            await self._docs_page(scope, receive, send)
        else:
            extra = [*SECURITY_HEADERS, API_CSP]

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), *extra]
                await send(message)

            await self.app(scope, receive, send_with_headers)

    async def _docs_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hold the (small) page until its body is complete, then send it with a CSP naming its inline scripts."""
        start: Message | None = None
        body = b""

        async def hold(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            body += message.get("body", b"")
            if message.get("more_body", False) or start is None:
                return
            hashes = " ".join(
                "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
                for script in _INLINE_SCRIPT.findall(body)
            )
            csp = (b"content-security-policy", DOCS_CSP.format(hashes=hashes).encode())
            await send({**start, "headers": [*start.get("headers", []), *SECURITY_HEADERS, csp]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, hold)
