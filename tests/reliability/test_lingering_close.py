"""The gateway's lingering close (gateway.http_server.BoundedHttpToolsProtocol.linger): an answer that closes the
connection while the client is still sending reaches the client whole, followed by a clean end (FIN), not a reset;
what the client sends after it is read and dropped within a bound of time and bytes, and a lingering connection
counts against the connection cap. Real gateway, real sockets on loopback, no TorchServe behind it."""

from __future__ import annotations

import socket
import time

import pytest

from tests.reliability.test_limits import address, gateway_with

pytestmark = [pytest.mark.integration, pytest.mark.skip(reason="held by the nginx edge: issue 25 item 2")]

OVER_LIMIT_HEAD = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000  # over 16 KiB, never ended
TOO_LARGE_BODY = (  # a body the gateway refuses from its Content-Length, before reading it
    b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
)
CHUNK = 1_024


def answer_then_end(sock: socket.socket, *, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until its FIN, and when the FIN came (monotonic); a reset fails the test."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            chunk = sock.recv(65_536)
        except ConnectionResetError:
            pytest.fail(f"reset instead of a clean end after {received[:60]!r}")
        if not chunk:
            return received, time.monotonic()
        received += chunk


def send_until_cut(sock: socket.socket, *, chunk: bytes, pause_s: float, limit_s: float) -> tuple[int, float]:
    """Keep sending ``chunk`` (every ``pause_s``) until the server's end of the connection is gone: (bytes sent,
    seconds). Fails the test if it is still there after ``limit_s``."""
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < limit_s:
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return sent, time.monotonic() - started
        sent += len(chunk)
        time.sleep(pause_s)
    pytest.fail(f"still connected after {limit_s} s and {sent} bytes")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (OVER_LIMIT_HEAD + b"a" * 28_000, 431),
        (TOO_LARGE_BODY + b"{" * 40_000, 413),
        (b"NOT HTTP AT ALL\r\n" + b"x" * 40_000, 400),
    ],
    ids=["431-head", "413-body", "400-garbage"],
)
def test_an_answer_given_while_the_client_sends_comes_whole_then_a_clean_end(request_bytes: bytes, status: int) -> None:
    """The client sends its whole request (48 KiB at most, in 1 KiB writes, as fast as it can) without reading,
    then reads: the answer, then the FIN, at once (long before the linger bound of 10 s); no reset. Closing
    with the rest of the request unread made the kernel reset the connection instead."""
    with gateway_with(linger_s=10.0) as base_url, socket.create_connection(address(base_url), timeout=5) as sock:
        for start in range(0, len(request_bytes), CHUNK):
            sock.sendall(request_bytes[start : start + CHUNK])
        sent = time.monotonic()
        answer, ended = answer_then_end(sock, timeout=10)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:100]
    assert b"connection: close" in answer.lower()
    assert ended - sent < 5


def test_a_client_that_keeps_trickling_is_cut_off_at_the_linger_time() -> None:
    """After its 431 and the FIN, the client sends 100 bytes every 20 ms (far under the byte bound): the gateway
    closes the connection about linger_s (1 s) after its answer, whatever the client does."""
    with gateway_with(linger_s=1.0) as base_url, socket.create_connection(address(base_url), timeout=5) as sock:
        sock.sendall(OVER_LIMIT_HEAD)
        answer, _ = answer_then_end(sock, timeout=10)
        sent, elapsed = send_until_cut(sock, chunk=b"a" * 100, pause_s=0.02, limit_s=10)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert 0.5 < elapsed < 4, elapsed
    assert sent < 65_536


def test_a_client_that_keeps_sending_fast_is_cut_off_at_the_linger_bytes() -> None:
    """After its 431 and the FIN, the client sends as fast as it can: the gateway reads and drops 16 KiB
    (linger_bytes) and closes, long before the linger time (30 s)."""
    with (
        gateway_with(linger_s=30.0, linger_bytes=16_384) as base_url,
        socket.create_connection(address(base_url), timeout=5) as sock,
    ):
        sock.sendall(OVER_LIMIT_HEAD)
        answer, _ = answer_then_end(sock, timeout=10)
        sent, elapsed = send_until_cut(sock, chunk=b"a" * CHUNK, pause_s=0, limit_s=15)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert sent >= 16_384
    assert elapsed < 15


def test_lingering_connections_count_against_the_cap_and_are_closed_first_to_make_room() -> None:
    """With a cap of 4, four connections answered 431 linger (their clients neither send nor close; linger_s 30 s).
    A fifth connection is served at once: the connection lingering the longest was closed to make room; the others
    still linger."""
    with gateway_with(max_client_connections=4, linger_s=30.0) as base_url:
        lingering = [socket.create_connection(address(base_url), timeout=5) for _ in range(4)]
        try:
            for sock in lingering:
                sock.sendall(OVER_LIMIT_HEAD)
                assert answer_then_end(sock, timeout=10)[0].startswith(b"HTTP/1.1 431 ")
            with socket.create_connection(address(base_url), timeout=5) as fifth:
                fifth.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert fifth.recv(65_536).startswith(b"HTTP/1.1 200 ")
            _, elapsed = send_until_cut(lingering[0], chunk=b"a", pause_s=0.01, limit_s=5)
            for sock in lingering[1:]:
                sock.sendall(b"a")  # accepted: read and dropped
            time.sleep(0.2)
            for sock in lingering[1:]:
                sock.sendall(b"a")  # a reset would fail this one
        finally:
            for sock in lingering:
                sock.close()
    assert elapsed < 5
