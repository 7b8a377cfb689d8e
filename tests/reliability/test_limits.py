"""Every resource of the gateway's HTTP server is bounded, with a clear answer: the request head (size, count,
deadline), connections (cap, idle keep-alive) and the request-body bytes held at once. Real gateway (uvicorn with
the bounded httptools protocol), real sockets on loopback; every flood is bounded in size and time."""

from __future__ import annotations

import json
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from gateway.settings import Settings
from stack.torchserve import TorchServe
from tests.gateway.server import running_gateway, settings_for

pytestmark = pytest.mark.integration

FLOOD_CHUNK = 1_024
FLOOD_MAX = 1_048_576  # the test never sends more than this on one connection
BUSY = "too many request bodies"


def address(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").split(":")
    return host, int(port)


def answer_of(sock: socket.socket, *, timeout: float) -> tuple[int, dict[str, str], dict[str, str]]:
    """Read one answer until the server closes: (status, headers, JSON body)."""
    sock.settimeout(timeout)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = sock.recv(65_536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


def flood(base_url: str) -> tuple[int, int]:
    """Send one request head whose header value never ends, 1 KiB at a time, until the server answers;
    (bytes sent, status). Stops at FLOOD_MAX bytes whatever happens. The gateway reads and drops what comes after
    its answer (a lingering close), so a write never fails here and the answer is read whole, then the end: a
    reset anywhere fails the test (it cost clients the answer before the lingering close)."""
    with socket.create_connection(address(base_url), timeout=5) as sock:
        sent = 0
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        while sent < FLOOD_MAX:
            if select.select([sock], [], [], 0.002)[0]:
                break
            sock.sendall(b"a" * FLOOD_CHUNK)
            sent += FLOOD_CHUNK
        status, _, body = answer_of(sock, timeout=5)
        assert body["type"] == "headers_too_large", body
        return sent, status


def health_ms(client: httpx.Client) -> float:
    started = time.perf_counter()
    assert client.get("/health").status_code == 200
    return (time.perf_counter() - started) * 1000


@contextmanager
def gateway_with(**overrides: object) -> Iterator[str]:
    """The real gateway with these settings (no TorchServe behind it: these tests stay in front of the app)."""
    settings = Settings.model_validate({"key_file": "/nonexistent/key_file.json", **overrides})
    with running_gateway(settings) as base_url:
        yield base_url


@pytest.mark.skip(reason="held by the nginx edge: issue 25 item 2")
def test_a_header_flood_gets_431_within_a_few_kib_and_health_stays_fast() -> None:
    """Four connections flood never-ending headers (each again as soon as it is answered) while /health is asked
    50 times: every flood is cut with 431 before 32 KiB (the limit is 16 KiB); /health's median stays under 100 ms
    and no answer waits a second. A /health blocked behind the floods would wait for their header deadline (10 s);
    one answer of a few hundred ms is the shared machine's scheduling (the floods, the client and the gateway share
    one process and its GIL here), which a 100 ms bound on every answer failed once in a fresh clone's make test."""
    results: list[tuple[int, int]] = []
    stop = threading.Event()

    def keep_flooding(base_url: str) -> None:
        while not stop.is_set():
            results.append(flood(base_url))

    with gateway_with() as base_url, httpx.Client(base_url=base_url, timeout=5) as client:
        health_ms(client)  # the keep-alive connection is open before the flood
        threads = [threading.Thread(target=keep_flooding, args=(base_url,), daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            while len(results) < 4:
                time.sleep(0.01)
            latencies = [health_ms(client) for _ in range(50)]
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

    assert {status for _, status in results} == {431}
    assert max(sent for sent, _ in results) < 32 * 1024, results
    print(f"\nheader flood: {len(results)} floods cut at {sorted({s for s, _ in results})} bytes sent; /health "
          f"p50 {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms")  # fmt: skip
    assert statistics.median(latencies) < 100, latencies
    assert max(latencies) < 1000, latencies


@pytest.mark.skip(reason="held by the nginx edge: issue 25 item 2")
@pytest.mark.parametrize(
    ("request_bytes", "status", "kind"),
    [
        (
            b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
            431,
            "headers_too_large",
        ),
        (b"GET /" + b"a" * 8_200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        (b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n", 400, "bad_request"),
    ],
    ids=["101-headers", "8k-target", "20k-header", "garbage", "malformed-header"],
)
def test_a_bad_head_gets_a_json_4xx_and_the_connection_closes(request_bytes: bytes, status: int, kind: str) -> None:
    with gateway_with() as base_url, socket.create_connection(address(base_url), timeout=5) as sock:
        sock.sendall(request_bytes)
        answered, headers, body = answer_of(sock, timeout=5)
        assert httpx.get(f"{base_url}/health").status_code == 200
    assert (answered, body["type"]) == (status, kind)
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert isinstance(body["error"], str)


@pytest.mark.skip(reason="held by the nginx edge: issue 25 item 2")
def test_unfinished_headers_get_408_at_the_header_deadline() -> None:
    with gateway_with(header_timeout_s=1.0) as base_url:
        with (
            socket.create_connection(address(base_url), timeout=5) as partial,
            socket.create_connection(address(base_url), timeout=5) as silent,
        ):
            started = time.monotonic()
            partial.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
            status, _, body = answer_of(partial, timeout=10)
            elapsed = time.monotonic() - started
            silent.settimeout(10)
            assert silent.recv(100) == b""  # nothing of a request came: closed without an answer
        assert httpx.get(f"{base_url}/health").status_code == 200
    assert (status, body["type"]) == (408, "request_timeout")
    assert 0.9 < elapsed < 5


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout() -> None:
    with gateway_with(keep_alive_timeout_s=1) as base_url, socket.create_connection(address(base_url)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65_536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.9 < time.monotonic() - started < 4


@pytest.mark.skip(reason="held by the nginx edge: issue 25 item 2")
def test_many_idle_connections_do_not_starve_a_real_request(torchserve: TorchServe) -> None:
    """200 connections that never send a byte against a cap of 32: each new one closes the one idle the longest,
    and a real prediction is answered at once."""
    settings = settings_for(torchserve, max_client_connections=32)
    with running_gateway(settings) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
        idle = [socket.create_connection(address(base_url), timeout=5) for _ in range(200)]
        try:
            started = time.monotonic()
            response = client.post("/generate", json={"passage": "The idle ones wait."})
            elapsed = time.monotonic() - started
            latencies = [health_ms(client) for _ in range(10)]
        finally:
            for sock in idle:
                sock.close()
    assert response.status_code == 200, response.text
    assert elapsed < 2
    assert statistics.median(latencies) < 100, latencies
    assert max(latencies) < 1000, latencies


@pytest.mark.skip(reason="held by the nginx edge: issue 25 item 2")
def test_past_the_connection_cap_with_none_idle_a_new_connection_gets_503() -> None:
    """16 connections stuck inside their headers fill a cap of 16: a new one gets 503 + Retry-After at once; at
    the header deadline the stuck ones are answered 408 and the gateway serves again."""
    with gateway_with(max_client_connections=16, header_timeout_s=2.0, retry_after_s=7) as base_url:
        stuck = [socket.create_connection(address(base_url), timeout=5) for _ in range(16)]
        try:
            for sock in stuck:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            with socket.create_connection(address(base_url), timeout=5) as extra:
                status, headers, body = answer_of(extra, timeout=5)
            for sock in stuck:
                assert answer_of(sock, timeout=10)[0] == 408
        finally:
            for sock in stuck:
                sock.close()
        assert httpx.get(f"{base_url}/health").status_code == 200
    assert (status, body["type"], headers["retry-after"]) == (503, "unavailable", "7")


def test_buffered_body_bytes_are_capped_across_connections() -> None:
    """Bodies held at once are capped (20,000 bytes here): two stalled 8,000-byte partial bodies fit, a third does
    not and gets 503 + Retry-After; once they go, requests are taken again."""
    with gateway_with(max_body_bytes=10_000, max_buffered_bytes=20_000) as base_url:
        head = b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9000\r\n\r\n"
        held = [socket.create_connection(address(base_url), timeout=5) for _ in range(2)]
        try:
            for sock in held:
                sock.sendall(head + b"a" * 8_000)
            assert httpx.get(f"{base_url}/health").status_code == 200  # one loop turn: both bodies are held now
            with socket.create_connection(address(base_url), timeout=5) as third:
                third.sendall(head + b"a" * 8_000)
                status, headers, body = answer_of(third, timeout=5)
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while True:  # the held bodies are let go once their connections are seen closed
            again = httpx.post(f"{base_url}/generate", json={"passage": "fits again"}).json()["error"]
            if BUSY not in again or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert (status, body["type"], headers["retry-after"]) == (503, "unavailable", "5")
    assert BUSY in body["error"]
    assert "key file" in again  # taken again: it got as far as TorchServe (none here)
