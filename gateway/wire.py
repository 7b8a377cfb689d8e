"""How the gateway's calls to a TorchServe replica reach the network: one :class:`Wire` exchange (method, URL,
headers and body in; the answer, read whole, out).

httpx stays the gateway's HTTP API: its exceptions are what every wire raises (:func:`gateway.errors.translate_errors`
maps them), its timeouts configure the calls, and calls with query parameters keep its client. But building an
``httpx.Request`` and an ``httpx.Response`` for every proxied call cost about as much CPU as aiohttp's whole exchange
(URL parsing, header normalisation, the body-stream machinery; docs/performance.md, section 3b), so production does
without them:

* :class:`gateway.aiohttp_transport.AiohttpTransport` (production) exchanges over aiohttp directly and answers an
  :class:`~gateway.aiohttp_transport.Answer`;
* :class:`HttpxWire` puts any httpx transport behind the same call (tests: ``httpx.MockTransport``) and answers its
  ``httpx.Response``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Protocol

import httpx

from gateway.aiohttp_transport import AiohttpTransport

Timeouts = Mapping[str, float | None]  # httpx's per-request timeouts: connect, read, write, pool


class UpstreamAnswer(Protocol):
    """What the gateway reads of an answer: ``httpx.Response`` has it, so has the aiohttp wire's answer."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...  # names case-insensitive

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...


class Wire(Protocol):
    async def exchange(
        self, method: str, url: str, headers: Mapping[str, str], content: bytes | None, timeouts: Timeouts
    ) -> UpstreamAnswer:
        """Send one request and read its whole answer; a failure raises the httpx exception of its kind."""
        ...


class HttpxWire:
    """Any httpx transport as a :class:`Wire`: the ``httpx.Request`` built as ``httpx.AsyncClient`` would, without
    the client layer (URL merging, default headers, cookie jar, auth and redirect flows: nothing the calls use)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def exchange(
        self, method: str, url: str, headers: Mapping[str, str], content: bytes | None, timeouts: Timeouts
    ) -> httpx.Response:
        request = httpx.Request(
            method, parsed_url(url), headers=headers, content=content, extensions={"timeout": timeouts}
        )
        response = await self.transport.handle_async_request(request)
        await response.aread()
        return response


def wire_for(transport: httpx.AsyncBaseTransport) -> Wire:
    """The wire over ``transport``: the aiohttp transport is one itself."""
    return transport if isinstance(transport, AiohttpTransport) else HttpxWire(transport)


@functools.lru_cache(maxsize=256)
def parsed_url(url: str) -> httpx.URL:
    """``url`` parsed once: httpx checks and parses a URL string character by character in Python, the largest cost
    of building a request (docs/performance.md, section 3b), and the inference URLs are a handful per replica (model,
    pinned version). Bounded: a client choosing many pinned versions only evicts the least used. httpx URLs are
    immutable, so requests can share one."""
    return httpx.URL(url)
