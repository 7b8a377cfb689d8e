"""The gateway's one client to TorchServe (:func:`gateway.app.http_client`: httpx's default transport, the settings'
timeouts and pool) against real sockets: answers pass through unchanged, each kind of socket failure surfaces as the
httpx exception that :func:`gateway.errors.translate_errors` maps, and pooled connections are reused only when
that is safe (no request ever reads another's answer)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import orjson
import pytest

from gateway.app import http_client
from gateway.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.anyio
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Post = Callable[..., Awaitable[httpx.Response]]


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
async def poster(*, read_s: float = 2.0, connect_s: float = 2.0, pool_s: float = 2.0, connections: int = 4
                 ) -> AsyncIterator[Post]:  # fmt: skip
    """``post(url, content, headers)`` through the gateway's client, built from these settings."""
    settings = Settings(
        read_timeout_s=read_s, connect_timeout_s=connect_s, pool_timeout_s=pool_s, max_connections=connections
    )
    async with http_client(settings) as http:

        async def post(url: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
            return await http.post(url, content=content, headers=headers)

        yield post


def client(timeout: float = 2.0) -> contextlib.AbstractAsyncContextManager[Post]:
    return poster(read_s=timeout)


async def test_request_and_answer_pass_through_unchanged() -> None:
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

    async with raw_server(echo) as url, client() as post:
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


async def test_refused_connection_is_a_connect_error() -> None:
    async with client() as post:
        with pytest.raises(httpx.ConnectError):
            await post(f"http://127.0.0.1:{free_port()}/x", b"{}")


async def test_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client closes the connection

    async with raw_server(silent) as url, client(timeout=0.3) as post:
        with pytest.raises(httpx.ReadTimeout):
            await post(f"{url}/x", b"{}")


async def test_connection_closed_mid_answer_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async with raw_server(hang_up) as url, client() as post:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(f"{url}/x", b"{}")


async def test_no_connection_in_time_is_a_pool_timeout() -> None:
    """The only pooled connection is busy with a request the server never answers: the next request cannot get a
    connection in time, and says so (503, the gateway is saturated; the replica is not marked down)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client closes the connection

    async with raw_server(silent) as url, poster(read_s=3.0, connect_s=0.2, pool_s=0.1, connections=1) as post:
        busy = asyncio.ensure_future(post(f"{url}/x", b"{}"))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.PoolTimeout):
            await post(f"{url}/y", b"{}")
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await busy


async def test_an_encoded_answer_is_decoded_as_httpx_decodes_it() -> None:
    payload = gzip.compress(b'{"label": "acceptable"}')

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        await writer.drain()

    async with raw_server(gzipped) as url, client() as post:
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


async def test_the_client_reuses_a_connection_and_opens_no_more_than_its_limit() -> None:
    handler, opened = answering(0.05)
    async with raw_server(handler) as url, poster(connections=2) as post:
        answers = await asyncio.gather(*(post(f"{url}/x", b"%d" % i) for i in range(6)))
        assert [a.content for a in answers] == [b"%d" % i for i in range(6)]
        await post(f"{url}/x", b"again")
    assert len(opened) == 2


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    handler, opened = answering(close_after=True)
    async with raw_server(handler) as url, client() as post:
        for i in range(3):
            assert (await post(f"{url}/x", b"%d" % i)).content == b"%d" % i
            await asyncio.sleep(0.05)  # the server's close arrives
    assert len(opened) == 3


async def test_an_answer_that_says_close_ends_its_connection() -> None:
    handler, opened = answering(extra=b"Connection: close\r\n")
    async with raw_server(handler) as url, client() as post:
        for i in range(2):
            assert (await post(f"{url}/x", b"%d" % i)).content == b"%d" % i
    assert len(opened) == 2


async def test_a_cancelled_exchange_never_leaves_its_answer_to_the_next_request() -> None:
    """The first request is cancelled while its answer is on the way: the only connection is closed, not pooled
    with that answer in it, and the next request (in the place it frees) gets its own answer."""
    handler, opened = answering(0.2)
    async with raw_server(handler) as url, poster(connections=1) as post:
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

    async with raw_server(chunked) as url, client() as post:
        assert (await post(f"{url}/x", b"{}")).content == b'{"a": 1}'


async def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(garbage) as url, client() as post:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(f"{url}/x", b"{}")


async def test_a_header_value_that_would_inject_a_header_is_refused() -> None:
    handler, _ = answering()
    async with raw_server(handler) as url, client() as post:
        with pytest.raises(httpx.LocalProtocolError):
            await post(f"{url}/x", b"{}", {"X-Request-ID": "a\r\nX-Injected: 1"})


async def test_a_request_cancelled_while_waiting_for_a_connection_leaves_its_place_to_the_next() -> None:
    handler, opened = answering(0.3)
    async with raw_server(handler) as url, poster(connections=1) as post:
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
