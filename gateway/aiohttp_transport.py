"""An ``httpx`` transport that sends over one pooled :class:`aiohttp.ClientSession`.

Why: the gateway's CPU per request decides its throughput on a 2-core machine shared with the model workers, and
httpcore's pool spent several times more CPU per proxied request than aiohttp's C-accelerated client (it polls
every idle socket and re-runs a failing ``import sniffio`` on each request; measured in docs/performance.md).
The gateway keeps ``httpx``'s API, its timeouts and its exception classes (so
:func:`gateway.errors.translate_errors` and the tests with ``httpx.MockTransport`` are unchanged); only the
bytes on the wire go through aiohttp. aiohttp's errors are mapped to the httpx exception a socket failure of the
same kind raises, below.

It carries the gateway's calls that go through ``httpx.AsyncClient`` (those with query parameters: the key renewal);
the inference and readiness calls use the gateway's own wire (:mod:`gateway.upstream_pool`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx

# Request headers aiohttp computes itself from the URL and the body.
_OWN_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Pooled keep-alive connections (at most ``limits.max_connections``); the session opens with the first request,
    inside the running event loop, and closes with the client."""

    def __init__(self, *, limits: httpx.Limits) -> None:
        self._limit = limits.max_connections or 100
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, ttl_dns_cache=5)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes by Content-Encoding itself
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),  # httpx's own headers are sent instead
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw if k.lower() not in _OWN_HEADERS
        ]
        body = await request.aread()
        timeout = _timeout(request.extensions.get("timeout", {}))
        answer, content = await self._send(request.method, str(request.url), headers, body or None, timeout, request)
        return _httpx_response(answer, content, request)

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | list[tuple[str, str]],
        body: bytes | None,
        timeout: aiohttp.ClientTimeout,
        request: httpx.Request,
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """aiohttp's answer (its status and headers stay readable once released) and its body; an aiohttp error as
        the httpx exception of its kind, for ``request``."""
        session = self._session or self._open()
        try:
            async with session.request(
                method, url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as answer:
                return answer, await answer.read()
        except aiohttp.ClientError as exc:
            raise _as_httpx(exc, request) from exc
        except TimeoutError as exc:  # the whole-request deadline (total), should one be set
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _httpx_response(answer: aiohttp.ClientResponse, content: bytes, request: httpx.Request) -> httpx.Response:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.raw_headers]
    return httpx.Response(answer.status, headers=headers, content=content, request=request)


def _timeout(spec: Mapping[str, Any]) -> aiohttp.ClientTimeout:
    """httpx's ``{"connect", "read", "write", "pool"}`` seconds as aiohttp's: waiting for a pooled connection and
    opening one share ``connect`` (aiohttp counts both there); ``read`` bounds each wait for answer bytes. aiohttp
    has no write deadline: a body (at most 1 MB here) is handed to the socket buffer, and a peer that stops reading
    shows up as ``read``'s timeout."""
    connect, pool, read = spec.get("connect"), spec.get("pool"), spec.get("read")
    both = None if connect is None and pool is None else (connect or 0) + (pool or 0)
    return aiohttp.ClientTimeout(total=None, connect=both, sock_connect=connect, sock_read=read)


def _as_httpx(exc: aiohttp.ClientError, request: httpx.Request) -> httpx.HTTPError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # no connection in time (pool wait or TCP connect)
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # sock_read: no answer bytes in time
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unreachable, DNS: nothing was sent
        return httpx.ConnectError(message, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.ClientOSError):  # reset mid-exchange
        return httpx.ReadError(message, request=request)
    if isinstance(exc, aiohttp.ClientResponseError):  # an answer aiohttp could not parse
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.TransportError(message, request=request)
