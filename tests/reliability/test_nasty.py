"""A hand-written corpus of hostile inputs for /generate and /predict (and their batch forms) against the real
stack. Each gets a clear 4xx with a JSON ``{"error", "type"}`` body, or a correct 200; after each one, and during
the slow-loris case, another client is still answered."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from stack.torchserve import TorchServe
from tests.gateway.server import running_gateway, settings_for
from tests.reliability.conftest import assert_error_body

pytestmark = pytest.mark.integration

JSON_CT = "application/json"
OK, INVALID, TOO_LARGE = 200, 422, 413


def nested(depth: int) -> bytes:
    return b'{"passage": ' + b"[" * depth + b"]" * depth + b"}"


# (id, path, body bytes, content type, expected status)
CORPUS: list[tuple[str, str, bytes, str, int]] = [
    ("empty-body", "/generate", b"", JSON_CT, INVALID),
    ("empty-text", "/generate", b'{"passage": ""}', JSON_CT, INVALID),
    ("whitespace-text", "/predict", b'{"text": " \\t\\n\\u3000\\u00a0"}', JSON_CT, INVALID),
    ("whitespace-body", "/predict", b"   \n\t ", JSON_CT, INVALID),
    ("1MB-body", "/generate", b'{"passage": "' + b"a" * 1_048_576 + b'"}', JSON_CT, TOO_LARGE),
    ("100k-char-text", "/predict", json.dumps({"text": "word " * 20_000}).encode(), JSON_CT, INVALID),
    ("at-char-limit", "/predict", json.dumps({"text": "é" * 5_000}).encode(), JSON_CT, OK),
    ("deeply-nested-json", "/generate", nested(100_000), JSON_CT, INVALID),
    ("nested-objects", "/predict", b'{"text": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_001, JSON_CT, INVALID),
    ("text-plain", "/generate", b'{"passage": "fine"}', "text/plain", INVALID),
    ("form-encoded", "/predict", b"text=fine", "application/x-www-form-urlencoded", INVALID),
    ("multipart", "/predict", b"--x\r\n\r\nfine\r\n--x--", "multipart/form-data; boundary=x", INVALID),
    ("no-content-type", "/generate", b'{"passage": "fine"}', "", INVALID),
    ("invalid-utf8", "/generate", b'{"passage": "\xff\xfe\xc3\x28"}', JSON_CT, INVALID),
    ("invalid-utf8-only", "/predict", b"\xda\x7f", JSON_CT, INVALID),
    ("lone-surrogate-escape", "/generate", b'{"passage": "a\\ud800b"}', JSON_CT, INVALID),
    ("nul-bytes", "/predict", b'{"text": "a\\u0000b\\u0000"}', JSON_CT, OK),
    ("raw-nul-in-json", "/predict", b'{"text": "a\x00b"}', JSON_CT, INVALID),
    (
        "rtl-and-combining",
        "/generate",
        json.dumps({"passage": "שלום עולם \u202e abc e\u0301\u0301\u0301"}).encode(),
        JSON_CT,
        OK,
    ),
    ("zalgo", "/predict", json.dumps({"text": "z" + "\u0336\u0337\u0338" * 1_000}).encode(), JSON_CT, OK),
    ("emoji", "/predict", json.dumps({"text": "👍🏽🔥 love it 🇫🇷 👨‍👩‍👧"}, ensure_ascii=False).encode(), JSON_CT, OK),
    ("number-for-string", "/generate", b'{"passage": 42}', JSON_CT, INVALID),
    ("null-for-string", "/predict", b'{"text": null}', JSON_CT, INVALID),
    ("list-for-string", "/predict", b'{"text": ["a"]}', JSON_CT, INVALID),
    ("string-for-list", "/predict/batch", b'{"texts": "abc"}', JSON_CT, INVALID),
    ("number-in-batch", "/generate/batch", b'{"passages": ["a", 1.5]}', JSON_CT, INVALID),
    ("duplicate-keys", "/generate", b'{"passage": "first", "passage": "second"}', JSON_CT, OK),
    ("duplicate-keys-bad-last", "/generate", b'{"passage": "first", "passage": 7}', JSON_CT, INVALID),
    ("extra-field", "/predict", b'{"text": "a", "model": "cola"}', JSON_CT, INVALID),
    ("legacy-field-on-wrong-route", "/predict", b'{"passage": "a"}', JSON_CT, INVALID),
    ("json-array-body", "/generate/batch", b'["a", "b"]', JSON_CT, INVALID),
    ("huge-number", "/generate", b'{"passage": 1' + b"0" * 5_000 + b"}", JSON_CT, INVALID),
    ("batch-10000", "/predict/batch", json.dumps({"texts": ["ok"] * 10_000}).encode(), JSON_CT, INVALID),
    ("batch-empty", "/generate/batch", b'{"passages": []}', JSON_CT, INVALID),
    ("batch-at-limit", "/generate/batch", json.dumps({"passages": ["ok"] * 64}).encode(), JSON_CT, OK),
    ("batch-of-blanks", "/generate/batch", b'{"passages": [" ", "\\n"]}', JSON_CT, INVALID),
    ("trailing-garbage", "/generate", b'{"passage": "a"} {"passage": "b"}', JSON_CT, INVALID),
    ("bom-prefixed", "/generate", b'\xef\xbb\xbf{"passage": "a"}', JSON_CT, OK),
]


def still_answering(client: httpx.Client) -> None:
    response = client.post("/generate", json={"passage": "The cat sat on the mat."})
    assert response.status_code == 200, response.text
    assert 0.0 <= response.json()["prob"] <= 1.0


@pytest.mark.parametrize(
    ("path", "body", "content_type", "expected"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS]
)
def test_nasty_input(gateway: httpx.Client, path: str, body: bytes, content_type: str, expected: int) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = gateway.post(path, content=body, headers=headers)

    assert response.status_code == expected, response.text[:300]
    if expected == OK:
        answer = response.json()
        results = answer["results"] if path.endswith("/batch") else [answer]
        assert all(("prob" in r) if path.startswith("/generate") else ("sentiment" in r) for r in results)
    else:
        kind = assert_error_body(response)["type"]
        assert kind == ("payload_too_large" if expected == TOO_LARGE else "invalid_input")
        assert len(response.content) < 2_000  # a short message, never the input back
    still_answering(gateway)


def test_duplicate_keys_take_the_last_value(gateway: httpx.Client) -> None:
    """JSON with duplicate keys is parsed as most parsers do (last one wins), matching the single-key request."""
    twice = gateway.post(
        "/generate", content=b'{"passage": "ignored", "passage": "I are a boy"}', headers={"Content-Type": JSON_CT}
    )
    once = gateway.post("/generate", json={"passage": "I are a boy"})
    assert twice.json()["prob"] == pytest.approx(once.json()["prob"], abs=1e-6)


SLOW_LORIS_CONNECTIONS = 20


def test_slow_loris_partial_bodies_do_not_block_others(gateway: httpx.Client, gateway_url: str) -> None:
    """Connections that send headers and part of a body, then stall, hold no worker: while they hang, other clients
    are answered promptly; when they finally close, the gateway is unharmed. (The gateway's own deadline for them,
    GATEWAY_BODY_TIMEOUT_S, is 30 s by default; the next test shows it firing.)"""
    host, port = gateway_url.removeprefix("http://").split(":")
    stalled = []
    try:
        for _ in range(SLOW_LORIS_CONNECTIONS):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(
                b"POST /generate HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n" + b'{"passage": "drip'
            )
            stalled.append(sock)
        started = time.monotonic()
        for _ in range(10):
            still_answering(gateway)
            assert gateway.get("/health").status_code == 200
        elapsed = time.monotonic() - started
        assert elapsed < 20, f"20 requests took {elapsed:.1f}s with {SLOW_LORIS_CONNECTIONS} stalled connections"
        # A header-only stall (no body byte at all) does not block either.
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: gateway\r\nContent-Le")
        stalled.append(sock)
        still_answering(gateway)
    finally:
        for sock in stalled:
            sock.close()
    still_answering(gateway)


def read_until_closed(sock: socket.socket, *, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = sock.recv(65_536)
        if not chunk:
            return received
        received += chunk
    raise TimeoutError(f"the connection was not closed within {timeout}s (got {received[:200]!r})")


def test_a_stalled_body_is_408_and_closed_at_the_body_deadline(torchserve: TorchServe) -> None:
    settings = settings_for(torchserve, body_timeout_s=1.0)
    with running_gateway(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"text": "drip'
            )
            still_answering(client)  # meanwhile
            answer = read_until_closed(sock, timeout=15)
            elapsed = time.monotonic() - started
        still_answering(client)

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(body)["type"] == "request_timeout"
    assert 0.9 < elapsed < 10
