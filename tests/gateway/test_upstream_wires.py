"""The gateway's two ways to TorchServe against real sockets: ``httpx.AsyncClient`` over the aiohttp transport (the
calls with query parameters) and the gateway's own pool (``UpstreamPool.exchange``: inference and readiness). Answers
pass through unchanged, the same bytes go out either way, each kind of socket failure surfaces as the httpx exception
that :func:`gateway.errors.translate_errors` maps; and the pool's connections are reused only when that is safe."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest

from gateway.aiohttp_transport import AiohttpTransport
from gateway.upstream_pool import UpstreamPool
from gateway.wire import Answer, HttpxWire, UpstreamAnswer
from tests.conftest import free_port

pytestmark = pytest.mark.anyio
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Post = Callable[..., Awaitable[UpstreamAnswer]]
LIMITS = httpx.Limits(max_connections=4)
WAYS = pytest.mark.parametrize("way", ["httpx_client", "pool"])


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
    """``post(url, content, headers)`` through an ``httpx.AsyncClient`` over the aiohttp transport, or the pool."""
    transport = AiohttpTransport(limits=limits)
    pool = UpstreamPool(max_connections=limits.max_connections or 100)
    async with httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits) as http:

        async def post(url: str, content: bytes, headers: dict[str, str] | None = None) -> UpstreamAnswer:
            if way == "httpx_client":
                return await http.post(url, content=content, headers=headers)
            return await pool.exchange("POST", url, headers or {}, content, timeout.as_dict())

        try:
            yield post
        finally:
            await pool.aclose()


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


@pytest.mark.parametrize(("way", "failure"), [("httpx_client", httpx.ConnectTimeout), ("pool", httpx.PoolTimeout)])
async def test_no_connection_in_time_is_a_pool_or_connect_timeout(way: str, failure: type[Exception]) -> None:
    """The only pooled connection is busy with a request the server never answers: the next request cannot get a
    connection in time. aiohttp counts that wait in its connect deadline (pool + connect seconds: the gateway then
    tries another replica); the pool says what it is (pool seconds: 503, the gateway is saturated)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client closes the connection

    timeout = httpx.Timeout(3.0, connect=0.2, pool=0.1)
    async with raw_server(silent) as url, poster(way, timeout, httpx.Limits(max_connections=1)) as post:
        busy = asyncio.ensure_future(post(f"{url}/x", b"{}"))
        await asyncio.sleep(0.1)
        with pytest.raises(failure):
            await post(f"{url}/y", b"{}")
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await busy


async def test_the_pool_sends_the_bytes_an_httpx_request_sent() -> None:
    """The pool skips the ``httpx.Request`` the gateway's calls went through before (what HttpxWire still builds),
    and aiohttp's ``Accept: */*``, which TorchServe does not read: nothing else of what goes out."""
    heads: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        heads.append(head + body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()

    headers = {"Content-Type": "application/json", "X-Request-ID": "r-1", "Authorization": "Bearer k"}
    timeouts = httpx.Timeout(2.0).as_dict()
    transport = AiohttpTransport(limits=LIMITS)
    pool = UpstreamPool(max_connections=4)
    try:
        for wire in (HttpxWire(transport), pool):
            async with raw_server(record) as url:
                await wire.exchange("POST", f"{url}/predictions/cola/2.0", headers, b'{"text": "a"}', timeouts)
    finally:
        await transport.aclose()
        await pool.aclose()
    before, now = (head.split(b"\r\n") for head in heads)
    assert before[0] == now[0] == b"POST /predictions/cola/2.0 HTTP/1.1"
    assert [line for line in before if not line.startswith((b"Host:", b"Accept: */*"))] == [
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

    async with raw_server(gzipped) as url, client("pool") as post:
        answer = await post(f"{url}/x", b"{}")
    assert answer.content == b'{"label": "acceptable"}'


def answering(delay_s: float = 0.0, *, close_after: bool = False, extra: bytes = b"") -> tuple[Handler, list[int]]:
    """A server that answers every request with its own body after ``delay_s`` (then hangs up if ``close_after``,
    without saying so); the list counts the connections it was opened."""
    opened: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(1)
        while True:
            try:
                _, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            await asyncio.sleep(delay_s)
            writer.write(b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body))
            await writer.drain()
            if close_after:
                return

    return handler, opened


async def test_the_pool_reuses_a_connection_and_opens_no_more_than_its_limit() -> None:
    handler, opened = answering(0.05)
    async with raw_server(handler) as url, poster("pool", httpx.Timeout(2.0), httpx.Limits(max_connections=2)) as post:
        answers = await asyncio.gather(*(post(f"{url}/x", b"%d" % i) for i in range(6)))
        assert [a.content for a in answers] == [b"%d" % i for i in range(6)]
        await post(f"{url}/x", b"again")
    assert len(opened) == 2


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    handler, opened = answering(close_after=True)
    async with raw_server(handler) as url, client("pool") as post:
        for i in range(3):
            assert (await post(f"{url}/x", b"%d" % i)).content == b"%d" % i
            await asyncio.sleep(0.05)  # the server's close arrives
    assert len(opened) == 3


async def test_an_answer_that_says_close_ends_its_connection() -> None:
    handler, opened = answering(extra=b"Connection: close\r\n")
    async with raw_server(handler) as url, client("pool") as post:
        for i in range(2):
            assert (await post(f"{url}/x", b"%d" % i)).content == b"%d" % i
    assert len(opened) == 2


async def test_a_cancelled_exchange_never_leaves_its_answer_to_the_next_request() -> None:
    """The first request is cancelled while its answer is on the way: the only connection is closed, not pooled
    with that answer in it, and the next request (in the place it frees) gets its own answer."""
    handler, opened = answering(0.2)
    async with raw_server(handler) as url, poster("pool", httpx.Timeout(2.0), httpx.Limits(max_connections=1)) as post:
        first = asyncio.ensure_future(post(f"{url}/x", b"first"))
        await asyncio.sleep(0.05)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert (await post(f"{url}/x", b"second")).content == b"second"
    assert len(opened) == 2


async def test_a_chunked_answer_is_read_whole() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        chunks = b'3\r\n{"a\r\n4\r\n": 1\r\n1\r\n}\r\n0\r\n\r\n'
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        await writer.drain()

    async with raw_server(chunked) as url, client("pool") as post:
        assert (await post(f"{url}/x", b"{}")).content == b'{"a": 1}'


async def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(garbage) as url, client("pool") as post:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(f"{url}/x", b"{}")


async def test_a_connection_idle_too_long_is_not_reused() -> None:
    handler, opened = answering()
    async with raw_server(handler) as url:
        pool = UpstreamPool(max_connections=2, idle_s=0.2)
        try:
            for pause in (0.0, 0.05, 0.3):  # reused after 0.05 s, not after 0.3 s
                await asyncio.sleep(pause)
                answer = await pool.exchange("POST", f"{url}/x", {}, b"%g" % pause, httpx.Timeout(2.0).as_dict())
                assert answer.content == b"%g" % pause
        finally:
            await pool.aclose()  # before the server stops: it waits for its connections to end
    assert len(opened) == 2


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "caf\u00e9 \u2603"])
async def test_a_header_value_that_cannot_go_out_as_it_is_is_refused(value: str) -> None:
    async with client("pool") as post:
        with pytest.raises(httpx.LocalProtocolError):
            await post(f"http://127.0.0.1:{free_port()}/x", b"{}", {"X-Request-ID": value})


async def test_a_request_cancelled_while_waiting_for_a_connection_leaves_its_place_to_the_next() -> None:
    handler, opened = answering(0.3)
    async with raw_server(handler) as url, poster("pool", httpx.Timeout(2.0), httpx.Limits(max_connections=1)) as post:
        busy = asyncio.ensure_future(post(f"{url}/x", b"busy"))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(post(f"{url}/x", b"gone"))  # waits for the one connection, then is cancelled
        await asyncio.sleep(0.05)
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        answers = await asyncio.gather(busy, post(f"{url}/x", b"next"))
    assert [a.content for a in answers] == [b"busy", b"next"]
    assert len(opened) == 1
