"""The bounds the gateway holds itself behind the edge (idle keep-alive, the request-body bytes held at once), on
real loopback sockets against the gateway alone, and idle connections at the local edge (``edge_url``) that must not
delay a real prediction. Every other client-facing bound is the edge's, tested in tests/edge/test_edge.py."""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from gateway.settings import Settings
from tests.gateway.server import running_gateway

pytestmark = pytest.mark.integration

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


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout() -> None:
    with gateway_with(keep_alive_timeout_s=1) as base_url, socket.create_connection(address(base_url)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65_536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.9 < time.monotonic() - started < 4


def test_many_idle_connections_do_not_starve_a_real_request(edge_url: str) -> None:
    """200 connections that never send a byte, held open at the edge: a real prediction is answered at once and
    /health stays fast."""
    with httpx.Client(base_url=edge_url, timeout=10) as client:
        idle = [socket.create_connection(address(edge_url), timeout=5) for _ in range(200)]
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
