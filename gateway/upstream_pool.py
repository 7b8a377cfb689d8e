"""The gateway's wire to TorchServe: pooled keep-alive HTTP/1.1 connections, each an asyncio protocol that writes a
request in one system call and reads its answer with httptools' C parser (the parser uvicorn serves the clients with).

Why not aiohttp, which it replaces on this path: the call to TorchServe was the largest piece of the gateway's own
CPU per proxied request once FastAPI's handling was off the hot path (docs/performance.md, section 3c), and aiohttp's
client builds a request object, a payload object, a response object, a stream reader and a timer context for each
call. This is the part of it the gateway uses: one method, a body in memory, an answer read whole.

The contract is :class:`gateway.wire.Wire`'s, and the failures are those :func:`gateway.errors.translate_errors`
maps, as the aiohttp transport raises them (``tests/gateway/test_upstream_wires.py`` runs the same tests on both):

* nothing could be sent: ``httpx.ConnectError`` (refused, unreachable, no such host) or ``httpx.ConnectTimeout``
  (the TCP connection not open within ``connect`` seconds): the gateway may send the request to another replica;
* ``httpx.PoolTimeout``: every one of the ``max_connections`` connections stayed busy for ``pool`` seconds;
* the request was sent, the answer did not come whole: ``httpx.ReadTimeout`` (no answer bytes for ``read``
  seconds), ``httpx.RemoteProtocolError`` (closed before the end of the answer, or an answer that is not HTTP),
  ``httpx.ReadError`` (reset): the gateway's retry of a lost inference attempt decides what follows.

A connection is reused only after a complete answer that allows it (HTTP/1.1 keep-alive); one whose exchange failed
or was cancelled is closed, never handed to the next request with a stale answer in it. A pooled connection the
server closed is dropped when its close arrives; one idle for ``idle_s`` (15 s, aiohttp's default) is closed rather
than reused, before a server or a middlebox between replicas drops it without a word. Answers with a
``Content-Encoding`` are decoded as httpx decodes them (TorchServe sends none).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.wire import Answer


@dataclass(frozen=True, slots=True)
class Target:
    """Where one URL's requests go: the connection's address and what the request line and Host header carry."""

    scheme: str
    host: str
    port: int
    host_header: bytes
    path: bytes  # path and query, as sent

    @property
    def address(self) -> tuple[str, str, int]:
        """What the pool keeps connections by: one replica's address (any of its paths)."""
        return self.scheme, self.host, self.port


@functools.lru_cache(maxsize=256)
def target_of(url: str) -> Target:
    """``url`` split once (the inference URLs are a handful per replica). Bounded as :func:`gateway.wire.parsed_url`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise httpx.UnsupportedProtocol(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, parts.hostname, port, parts.netloc.encode("idna"), path.encode("ascii"))


class UpstreamPool:
    """At most ``max_connections`` connections, open or being opened, to all replicas together; idle ones are kept
    per replica address and the most recently used is taken first (the others may then time out on the server)."""

    def __init__(self, *, max_connections: int, idle_s: float = 15.0) -> None:
        self.max_connections = max_connections
        self.idle_s = idle_s
        self._open = 0
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tls: ssl.SSLContext | None = None

    async def exchange(
        self, method: str, url: str, headers: Mapping[str, str], content: bytes | None, timeouts: Mapping[str, Any]
    ) -> Answer | httpx.Response:
        """One request, its whole answer; a failure as the httpx exception of its kind (the module's docstring)."""
        target = target_of(url)
        request = _request_bytes(method, target, headers, content or b"")
        connection = await self._connection(target, method, url, timeouts)
        try:
            answer = await connection.exchange(request, timeouts.get("read"), method, url)
        except BaseException:
            connection.close()
            raise
        finally:
            self._release(connection, target)
        if "content-encoding" in answer.headers:  # never from TorchServe; httpx decodes it as it would have
            return httpx.Response(answer.status_code, headers=list(answer.headers.items()), content=answer.content,
                                  request=httpx.Request(method, url))  # fmt: skip
        return answer

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def _connection(self, target: Target, method: str, url: str, timeouts: Mapping[str, Any]) -> _Connection:
        """An idle connection to ``target``, else a new one when the limit allows (closing another address's idle
        one if need be), else the first of these once a connection is given back, within ``pool`` seconds."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            idle = self._idle.get(target.address)
            while idle:
                connection = idle.pop()
                if connection.usable and loop.time() - connection.idle_since < self.idle_s:
                    return connection
                connection.close()
            if self._open < self.max_connections or self._close_an_idle_one():
                return await self._open_new(target, timeouts.get("connect"), method, url)
            if deadline is None:
                pool = timeouts.get("pool")
                deadline = float("inf") if pool is None else loop.time() + pool
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(None if deadline == float("inf") else deadline):
                    await waiter
            except BaseException as exc:  # the deadline, or the request cancelled
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken in the same turn: the place it was given goes to the next waiter
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout("no free connection to TorchServe in time",
                                            request=httpx.Request(method, url)) from None  # fmt: skip
                raise

    async def _open_new(self, target: Target, connect_s: float | None, method: str, url: str) -> _Connection:
        self._open += 1
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if target.scheme == "https" else None
        try:
            async with asyncio.timeout(connect_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self), target.host, target.port, ssl=tls,
                    server_hostname=target.host if tls else None,
                )  # fmt: skip
            connection.counted = True  # from now on its close frees its place (before, the failure here does)
        except TimeoutError:
            self._closed()
            raise httpx.ConnectTimeout("TorchServe did not accept the connection in time",
                                       request=httpx.Request(method, url)) from None  # fmt: skip
        except OSError as exc:  # refused, unreachable, no such host, TLS handshake
            self._closed()
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=httpx.Request(method, url)) from exc
        except BaseException:
            self._closed()
            raise
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _release(self, connection: _Connection, target: Target) -> None:
        """Back to the pool when reusable (a closed one was already counted out by :meth:`_closed`)."""
        if connection.usable:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(target.address, []).append(connection)
            self._wake()

    def _close_an_idle_one(self) -> bool:
        for connections in self._idle.values():
            if connections:
                connections.pop(0).close()  # the least recently used; its close counts it out
                return True
        return False

    def _closed(self) -> None:
        """A connection closed (or never opened): its place is free."""
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _request_bytes(method: str, target: Target, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), target.path, target.host_header)]
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
            raise httpx.LocalProtocolError(f"invalid header {name!r}")
        try:
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        except UnicodeEncodeError:
            raise httpx.LocalProtocolError(f"header {name!r} is not latin-1 text") from None
    lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
    lines.append(body)
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one exchange at a time, the answer parsed as its bytes arrive."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.counted = False  # its place in the pool's count is freed by its close
        self.closed = False
        self.keep_alive = True  # False once it must not carry another request
        self.idle_since = 0.0  # the event loop's time when it was last given back to the pool
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_s: float | None = None
        self._request = ("", "")  # method and URL of the exchange in progress, for the exceptions
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._status = 0

    @property
    def usable(self) -> bool:
        return not self.closed and self.keep_alive and self._answer is None

    async def exchange(self, request: bytes, read_s: float | None, method: str, url: str) -> Answer:
        assert self.transport is not None
        self._answer = answer = asyncio.get_running_loop().create_future()
        self._headers, self._body, self._request, self._read_s = [], [], (method, url), read_s
        self.transport.write(request)
        self._restart_timer()
        try:
            return await answer
        finally:
            self._answer = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def close(self) -> None:
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # bytes nobody asked for: the connection cannot be trusted with the next request
            self.keep_alive = False
            self.close()
            return
        self._restart_timer()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(httpx.RemoteProtocolError, f"TorchServe's answer is not valid HTTP ({exc})")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if self.counted:
            self.pool._closed()
        if exc is None:
            self._fail(httpx.RemoteProtocolError, "TorchServe closed the connection before the answer was complete")
        else:
            self._fail(httpx.ReadError, str(exc) or type(exc).__name__)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        answer = self._answer
        if answer is not None and not answer.done():
            headers = CIMultiDictProxy(CIMultiDict(self._headers))
            answer.set_result(Answer(self._status, headers, b"".join(self._body)))
        if not self.keep_alive:
            self.close()

    def _restart_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._read_s is not None and self._answer is not None:
            self._timer = asyncio.get_running_loop().call_later(self._read_s, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(httpx.ReadTimeout, f"no answer bytes from TorchServe for {self._read_s:g} s")
        self.close()

    def _fail(self, kind: type[httpx.TransportError], message: str) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(kind(message, request=httpx.Request(*self._request)))
