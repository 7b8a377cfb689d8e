"""The transport under the one httpx client to TorchServe: httpx-aiohttp's ``AiohttpTransport`` (aiohttp's pool and
parser under httpx's API), chosen by measurement: it halves the gateway's CPU per request against httpx's default
transport (docs/performance.md, "The gateway on public APIs").

Two things are added, both through public APIs only:

* **Exact errors.** httpx-aiohttp maps aiohttp's errors coarsely: a connection closed mid-answer and a wait for a
  pooled connection both come out as ``ConnectTimeout``, and an answer that is not HTTP, or a header value that would
  inject a header, is not mapped at all. The gateway's retry (:func:`gateway.torchserve.lost`), its "never sent"
  rule and :func:`gateway.errors.translate_errors` need the kinds httpx itself raises, so they are mapped again from
  aiohttp's own exception (the cause httpx-aiohttp keeps).
* **The pool bound.** aiohttp's connector waits for a free connection under the same timeout as the connect, so a
  saturated pool would read as an unreachable replica. The bound is a semaphore here instead (``max_connections``,
  waited on for the pool timeout: :class:`httpx.PoolTimeout`), and aiohttp's connector is unbounded below it.
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

IDLE_CONNECTION_S = 5.0  # httpx's own default keep-alive expiry


def aiohttp_to_httpx(exc: BaseException, request: httpx.Request) -> httpx.HTTPError | None:
    """The httpx exception httpx's default transport raises for the failure aiohttp reported as ``exc``."""
    kinds: list[tuple[type[BaseException], type[httpx.TransportError]]] = [
        (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, unreachable, name not found: never sent
        (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),  # the pool wait is the semaphore's: a connect
        (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
        (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),  # closed before or during the answer
        (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),  # the body cut short
        (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # not an HTTP answer
        (aiohttp.ClientOSError, httpx.ReadError),  # reset
        (aiohttp.ClientError, httpx.ReadError),
        (ValueError, httpx.LocalProtocolError),  # aiohttp refuses a header value with CR or LF
    ]
    for aiohttp_kind, httpx_kind in kinds:
        if isinstance(exc, aiohttp_kind):
            return httpx_kind(str(exc) or type(exc).__name__, request=request)
    return None


class UpstreamTransport(httpx.AsyncBaseTransport):
    """``AiohttpTransport`` with exact errors and the pool bound (module docstring). Answers are read whole before
    the connection is given back: the gateway's calls to TorchServe are never streamed."""

    def __init__(self, *, max_connections: int) -> None:
        self.slots = asyncio.Semaphore(max_connections)
        self.inner = AiohttpTransport(
            client=lambda: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=IDLE_CONNECTION_S)
            )
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool_s = request.extensions.get("timeout", {}).get("pool")
        try:
            await asyncio.wait_for(self.slots.acquire(), pool_s)
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection to TorchServe in time", request=request) from None
        try:
            response = await self.inner.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
            return response
        except (httpx.HTTPError, aiohttp.ClientError, ValueError) as exc:
            cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) else exc
            exact = aiohttp_to_httpx(cause, request) if cause is not None else None
            if exact is None:
                raise
            raise exact from exc
        finally:
            self.slots.release()

    async def aclose(self) -> None:
        await self.inner.aclose()
