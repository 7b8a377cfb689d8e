"""The aiohttp-backed httpx transport against real sockets, both ways in (``httpx.AsyncClient`` over it, and its own
``exchange``, the gateway's wire): answers pass through unchanged, the same bytes go out either way, and each kind of
socket failure surfaces as the httpx exception that :func:`gateway.errors.translate_errors` maps."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest

from gateway.aiohttp_transport import AiohttpTransport, Answer
from gateway.wire import HttpxWire, UpstreamAnswer
from tests.conftest import free_port

pytestmark = pytest.mark.anyio
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Post = Callable[..., Awaitable[UpstreamAnswer]]
LIMITS = httpx.Limits(max_connections=4)
WAYS = pytest.mark.parametrize("way", ["httpx_client", "exchange"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the gateway runs on asyncio (uvloop)


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    handlers: set[asyncio.Task[None]] = set()

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), timeout=5)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    return head, await reader.readexactly(length)


@asynccontextmanager
async def poster(way: str, timeout: httpx.Timeout, limits: httpx.Limits = LIMITS) -> AsyncIterator[Post]:
    """``post(url, content, headers)`` through an ``httpx.AsyncClient`` over the transport, or its ``exchange``."""
    transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits) as http:

        async def post(url: str, content: bytes, headers: dict[str, str] | None = None) -> UpstreamAnswer:
            if way == "httpx_client":
                return await http.post(url, content=content, headers=headers)
            return await transport.exchange("POST", url, headers or {}, content, timeout.as_dict())

        yield post


def client(way: str, timeout: float = 2.0) -> contextlib.AbstractAsyncContextManager[Post]:
    return poster(way, httpx.Timeout(timeout))


@WAYS
async def test_request_and_answer_pass_through_unchanged(way: str) -> None:
    seen: dict[str, bytes] = {}

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                head, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                break
            seen["head"], seen["body"] = head, body
            payload = b'{"ok": "\xc3\xa9"}'
            writer.write(b"HTTP/1.1 418 I'm a teapot\r\nContent-Type: application/json\r\nX-Model-Version: 2.0\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))  # fmt: skip
            await writer.drain()
        writer.close()

    async with raw_server(echo) as url, client(way) as post:
        for _ in range(3):  # the same pooled connection is reused
            headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
            answer = await post(f"{url}/predictions/cola?x=1", b'{"text": "a"}', headers)
            assert answer.status_code == 418
            assert answer.headers["X-Model-Version"] == "2.0"
            assert answer.headers.get("x-model-version") == "2.0"
            assert orjson.loads(answer.content) == {"ok": "é"}
            assert answer.text == '{"ok": "é"}'
    assert seen["head"].startswith(b"POST /predictions/cola?x=1 HTTP/1.1\r\n")
    assert b"authorization: bearer k\r\n" in seen["head"].lower()
    assert seen["body"] == b'{"text": "a"}'


@WAYS
async def test_refused_connection_is_a_connect_error(way: str) -> None:
    async with client(way) as post:
        with pytest.raises(httpx.ConnectError):
            await post(f"http://127.0.0.1:{free_port()}/x", b"{}")


@WAYS
async def test_silent_server_is_a_read_timeout(way: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client closes the connection

    async with raw_server(silent) as url, client(way, timeout=0.3) as post:
        with pytest.raises(httpx.ReadTimeout):
            await post(f"{url}/x", b"{}")


@WAYS
async def test_connection_closed_mid_answer_is_a_protocol_error(way: str) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async with raw_server(hang_up) as url, client(way) as post:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(f"{url}/x", b"{}")


@WAYS
async def test_no_connection_in_time_is_a_connect_timeout(way: str) -> None:
    """The only pooled connection is busy with a request the server never answers: the next request cannot get a
    connection within pool + connect seconds (nothing sent, so the gateway may try another replica)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client closes the connection

    timeout = httpx.Timeout(3.0, connect=0.2, pool=0.1)
    async with raw_server(silent) as url, poster(way, timeout, httpx.Limits(max_connections=1)) as post:
        busy = asyncio.ensure_future(post(f"{url}/x", b"{}"))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.ConnectTimeout):
            await post(f"{url}/y", b"{}")
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await busy


async def test_exchange_sends_the_bytes_an_httpx_request_sent() -> None:
    """``exchange`` skips the ``httpx.Request`` the gateway's calls went through before (what HttpxWire still
    builds), not a byte of what goes out."""
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        heads.append(head + body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()

    headers = {"Content-Type": "application/json", "X-Request-ID": "r-1", "Authorization": "Bearer k"}
    timeouts = httpx.Timeout(2.0).as_dict()
    transport = AiohttpTransport(limits=LIMITS)
    try:
        for wire in (HttpxWire(transport), transport):
            async with raw_server(record) as url:
                await wire.exchange("POST", f"{url}/predictions/cola/2.0", headers, b'{"text": "a"}', timeouts)
    finally:
        await transport.aclose()
    before, now = (head.split(b"\r\n") for head in heads)
    assert before[0] == now[0] == b"POST /predictions/cola/2.0 HTTP/1.1"
    assert [line for line in before if not line.startswith(b"Host:")] == [
        line for line in now if not line.startswith(b"Host:")
    ]  # every header (the port aside), in order, and the body
    assert now[-1] == b'{"text": "a"}'


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", '{"error": "é"}'.encode()),
        ("text/plain; charset=latin-1", "déjà".encode("latin-1")),
        ("text/plain; charset=no-such-charset", "é".encode()),
        ("text/plain", b"bad \xff byte"),
        ("text/plain", b""),
    ],
)
def test_an_answer_reads_as_text_as_httpx_reads_it(content_type: str, body: bytes) -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    answer = Answer(500, CIMultiDictProxy(CIMultiDict({"Content-Type": content_type})), body)
    assert answer.text == httpx.Response(500, headers={"Content-Type": content_type}, content=body).text


async def test_an_encoded_answer_is_decoded_as_httpx_decodes_it() -> None:
    payload = gzip.compress(b'{"label": "acceptable"}')

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        await writer.drain()

    async with raw_server(gzipped) as url, client("exchange") as post:
        answer = await post(f"{url}/x", b"{}")
    assert answer.content == b'{"label": "acceptable"}'
