"""The aiohttp-backed httpx transport against real sockets: answers pass through unchanged, and each kind of socket
failure surfaces as the httpx exception that :func:`gateway.errors.translate_errors` maps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from gateway.aiohttp_transport import AiohttpTransport
from tests.conftest import free_port

pytestmark = pytest.mark.anyio
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
LIMITS = httpx.Limits(max_connections=4)


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


def client(timeout: float = 2.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AiohttpTransport(limits=LIMITS), timeout=timeout, limits=LIMITS)


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

    async with raw_server(echo) as url, client() as http:
        for _ in range(3):  # the same pooled connection is reused
            headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
            answer = await http.post(f"{url}/predictions/cola?x=1", content=b'{"text": "a"}', headers=headers)
            assert answer.status_code == 418
            assert answer.headers["X-Model-Version"] == "2.0"
            assert answer.json() == {"ok": "é"}
    assert seen["head"].startswith(b"POST /predictions/cola?x=1 HTTP/1.1\r\n")
    assert b"authorization: bearer k\r\n" in seen["head"].lower()
    assert seen["body"] == b'{"text": "a"}'


async def test_refused_connection_is_a_connect_error() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.post(f"http://127.0.0.1:{free_port()}/x", content=b"{}")


async def test_silent_server_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client closes the connection

    async with raw_server(silent) as url, client(timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{url}/x", content=b"{}")


async def test_connection_closed_mid_answer_is_a_protocol_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async with raw_server(hang_up) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(f"{url}/x", content=b"{}")


async def test_no_connection_in_time_is_a_connect_timeout() -> None:
    """The only pooled connection is busy with a request the server never answers: the next request cannot get a
    connection within pool + connect seconds (nothing sent, so the gateway may try another replica)."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers; returns when the client closes the connection

    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(3.0, connect=0.2, pool=0.1)
    transport = AiohttpTransport(limits=limits)
    async with raw_server(silent) as url, httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        busy = asyncio.ensure_future(http.post(f"{url}/x", content=b"{}"))
        await asyncio.sleep(0.1)
        with pytest.raises(httpx.ConnectTimeout):
            await http.post(f"{url}/y", content=b"{}")
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await busy
