"""What the real gateway server sends on the wire: every answer a correct HTTP/1.1 message (parsed by h11, strict
about framing), and the gateway's own layer (gateway.middleware) on every answer it should be on. Real uvicorn
server in a thread, raw sockets on loopback, no TorchServe behind it (the inference routes answer 503)."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fastapi_offline
import h11
import httpx
import pytest

from gateway.settings import Settings
from tests.gateway.conftest import sample
from tests.gateway.server import running_gateway

pytestmark = pytest.mark.integration

ASSETS = Path(fastapi_offline.__file__).parent / "static"
BIG_ASSET = "swagger-ui-bundle.js"  # ~1.5 MB: sent as many body chunks, after a file read
# struct tcp_info (linux/tcp.h): tcpi_data_segs_in, the segments with data this socket received
DATA_SEGS_IN = 152


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    settings = Settings.model_validate({"key_file": "/nonexistent/key_file.json", "max_body_bytes": 4096})
    with running_gateway(settings) as url:
        yield url


@contextmanager
def connection(base_url: str) -> Iterator[socket.socket]:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        yield sock


def request(
    method: str, target: str, *, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> list[h11.Request | h11.Data | h11.EndOfMessage]:
    """A request as h11 events (h11 writes them, so their framing is right); a body is JSON."""
    framing = [("Content-Length", str(len(body)))] + ([("Content-Type", "application/json")] if body else [])
    head = h11.Request(method=method, target=target, headers=[("Host", "gateway"), *framing, *(headers or [])])
    return [head, h11.Data(data=body), h11.EndOfMessage()]


def written(writer: h11.Connection, events: list[h11.Request | h11.Data | h11.EndOfMessage]) -> bytes:
    return b"".join(writer.send(event) or b"" for event in events)


def read_answer(sock: socket.socket, reader: h11.Connection) -> Answer:
    """The next answer on ``sock``, parsed by ``reader`` (which knows the request it answers)."""
    status, headers, body = 0, {}, b""
    while True:
        event = reader.next_event()
        if event is h11.NEED_DATA:
            reader.receive_data(sock.recv(65_536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {name.decode(): value.decode() for name, value in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return Answer(status, headers, body)
        elif isinstance(event, h11.ConnectionClosed):
            raise AssertionError("closed before the answer was complete")


def exchange(sock: socket.socket, reader: h11.Connection, method: str, target: str, **kwargs: object) -> Answer:
    """Send one request on a kept-alive connection and read its answer."""
    if reader.our_state is h11.DONE:
        reader.start_next_cycle()
    sock.sendall(written(reader, request(method, target, **kwargs)))  # type: ignore[arg-type]
    return read_answer(sock, reader)


def data_segments_received(sock: socket.socket) -> int:
    return int(struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256), DATA_SEGS_IN)[0])


def test_kept_alive_answers_are_complete_and_in_order(base_url: str) -> None:
    with connection(base_url) as sock:
        reader = h11.Connection(h11.CLIENT)
        for _ in range(2):
            assert exchange(sock, reader, "GET", "/health").body == b'{"status":"ok"}'
            failed = exchange(sock, reader, "POST", "/generate", body=b'{"passage": "x"}')
            assert (failed.status, failed.headers["retry-after"]) == (503, "5")
            assert exchange(sock, reader, "GET", "/nowhere").status == 404


def test_pipelined_requests_get_their_answers_in_order(base_url: str) -> None:
    first, second = request("GET", "/health"), request("POST", "/generate", body=b'{"passage": ""}')
    with connection(base_url) as sock:
        reader = h11.Connection(h11.CLIENT)
        sock.sendall(written(reader, first) + written(h11.Connection(h11.CLIENT), second))
        assert read_answer(sock, reader).status == 200
        reader.start_next_cycle()
        written(reader, second)  # what was sent, so that the reader expects its answer
        assert read_answer(sock, reader).status == 422


def test_bodyless_answers_head_and_304_keep_the_connection_usable(base_url: str) -> None:
    """An answer without body bytes (HEAD, 304) still sends its head, in one segment, and nothing stray follows."""
    asset = f"/docs/assets/{BIG_ASSET}"
    size = (ASSETS / BIG_ASSET).stat().st_size
    with connection(base_url) as sock:
        reader = h11.Connection(h11.CLIENT)
        segments = data_segments_received(sock) if sys.platform == "linux" else 0
        head = exchange(sock, reader, "HEAD", asset)
        assert (head.status, head.headers["content-length"], head.body) == (200, str(size), b"")
        unchanged = exchange(sock, reader, "GET", asset, headers=[("If-None-Match", head.headers["etag"])])
        assert (unchanged.status, unchanged.body) == (304, b"")
        assert unchanged.headers["x-content-type-options"] == "nosniff"
        if sys.platform == "linux":
            assert data_segments_received(sock) - segments == 2
        assert exchange(sock, reader, "GET", "/health").status == 200


def test_a_file_sent_in_many_chunks_arrives_whole(base_url: str) -> None:
    with connection(base_url) as sock:
        reader = h11.Connection(h11.CLIENT)
        answer = exchange(sock, reader, "GET", f"/docs/assets/{BIG_ASSET}")
        assert answer.status == 200
        assert answer.body == (ASSETS / BIG_ASSET).read_bytes()
        assert exchange(sock, reader, "GET", "/health").status == 200


def test_100_continue_comes_before_the_answer(base_url: str) -> None:
    """The interim answer is not held back with the real one: the client waits for it before sending its body."""
    head, body, end = request("POST", "/generate", headers=[("Expect", "100-continue")], body=b'{"passage": "x"}')
    with connection(base_url) as sock:
        reader = h11.Connection(h11.CLIENT)
        sock.sendall(written(reader, [head]))
        interim = sock.recv(65_536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        reader.receive_data(interim)
        assert isinstance(reader.next_event(), h11.InformationalResponse)
        sock.sendall(written(reader, [body, end]))
        assert read_answer(sock, reader).status == 503


def test_an_answer_that_closes_the_connection_is_whole_first(base_url: str) -> None:
    with connection(base_url) as sock:
        reader = h11.Connection(h11.CLIENT)
        answer = exchange(sock, reader, "GET", "/health", headers=[("Connection", "close")])
        assert (answer.status, answer.headers["connection"], answer.body) == (200, "close", b'{"status":"ok"}')
        assert sock.recv(100) == b""


API_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "cross-origin-resource-policy": "same-origin",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}


def test_the_gateway_layer_heads_and_counts_refusals_of_the_body_limit(base_url: str) -> None:
    """A body over the limit is refused by the gateway's layer, inside the request id and security headers: the
    refusal carries both and is counted; a malformed request id is refused before them (no headers) and counted."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        too_large = client.post("/generate", content=b"x" * 5000, headers={"X-Request-ID": "limit-1"})
        bad_id = client.post("/generate", json={"passage": "x"}, headers={"X-Request-ID": "not an id"})
        docs = client.get("/docs", headers={"X-Request-ID": "docs-1"})
        metrics = client.get("/metrics").text

    assert (too_large.status_code, too_large.json()["type"]) == (413, "payload_too_large")
    assert too_large.headers["x-request-id"] == "limit-1"
    assert API_HEADERS.items() <= dict(too_large.headers).items()
    assert (bad_id.status_code, bad_id.json()["type"]) == (400, "invalid_request_id")
    assert "x-request-id" not in bad_id.headers
    assert "content-security-policy" not in bad_id.headers
    assert docs.headers["x-request-id"] == "docs-1"
    assert docs.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self' 'sha256-")
    assert sample(metrics, "gateway_requests_total", method="POST", route="<unmatched>", status="413") == 1
    assert sample(metrics, "gateway_requests_total", method="POST", route="<unmatched>", status="400") == 1
    assert sample(metrics, "gateway_requests_total", method="GET", route="/docs", status="200") == 1
