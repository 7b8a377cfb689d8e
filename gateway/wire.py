"""How the gateway's calls to a TorchServe replica reach the network: one :class:`Wire` exchange (method, URL,
headers and body in; the answer, read whole, out).

httpx stays the gateway's HTTP API: its exceptions are what every wire raises (:func:`gateway.errors.translate_errors`
maps them), its timeouts configure the calls, and calls with query parameters keep its client. But building an
``httpx.Request`` and an ``httpx.Response`` for every proxied call cost about as much CPU as aiohttp's whole exchange
(URL parsing, header normalisation, the body-stream machinery; docs/performance.md, section 3b), so production does
without them:

* :class:`gateway.upstream_pool.UpstreamPool` (production) keeps its own keep-alive connections and answers an
  :class:`Answer`;
* :class:`HttpxWire` puts any httpx transport behind the same call (tests: ``httpx.MockTransport``) and answers its
  ``httpx.Response``.
"""

from __future__ import annotations

import codecs
import email.message
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
from multidict import CIMultiDictProxy

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


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer read whole: the part of ``httpx.Response`` the gateway reads (:class:`gateway.wire.UpstreamAnswer`).
    One difference, which TorchServe's answers never meet: a header sent twice reads as its first value here, where
    httpx joins the values with ", "."""

    status_code: int
    headers: CIMultiDictProxy[str]
    content: bytes

    @property
    def text(self) -> str:
        """The body decoded as ``httpx.Response.text`` does: Content-Type's charset if known, else UTF-8; bytes that
        do not decode are replaced."""
        message = email.message.Message()
        message["content-type"] = self.headers.get("Content-Type", "")
        charset = message.get_content_charset(failobj=None)
        try:
            decoder = codecs.getincrementaldecoder(charset or "utf-8")(errors="replace")
        except LookupError:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(self.content, final=True)


class Wire(Protocol):
    async def exchange(
        self, method: str, url: str, headers: Mapping[str, str], content: bytes | None, timeouts: Timeouts
    ) -> UpstreamAnswer:
        """Send one request and read its whole answer; a failure raises the httpx exception of its kind."""
        ...

    async def aclose(self) -> None:
        """Close what the wire holds (at the app's shutdown)."""
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

    async def aclose(self) -> None:
        """Nothing of its own: the transport is closed by the client that owns it."""


@functools.lru_cache(maxsize=256)
def parsed_url(url: str) -> httpx.URL:
    """``url`` parsed once: httpx checks and parses a URL string character by character in Python, the largest cost
    of building a request (docs/performance.md, section 3b), and the inference URLs are a handful per replica (model,
    pinned version). Bounded: a client choosing many pinned versions only evicts the least used. httpx URLs are
    immutable, so requests can share one."""
    return httpx.URL(url)
