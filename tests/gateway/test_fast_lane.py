"""The fast lane (gateway/fast_lane.py) answers what FastAPI would, byte for byte, and leaves the rest to FastAPI.

Two gateways on one fake TorchServe, one with the lane and one without, get the same requests: plain ones (the
lane's), and every kind the lane must leave to FastAPI (other content types, headers sent twice, bodies pydantic's
JSON parser and the json module read differently, invalid values, TorchServe failing). Status, headers and body must
be the same, and so must the counts in /metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.datastructures import State
from starlette.types import Message, Receive, Scope, Send

from gateway.app import create_app
from gateway.canary import StateWatcher, VersionChooser
from gateway.fast_lane import FastLane
from gateway.metrics import Metrics
from gateway.routes import inference_routes
from gateway.settings import Settings
from gateway.shadow import Shadow
from gateway.torchserve import TorchServeClient
from gateway.wire import HttpxWire
from tests.gateway.conftest import FakeTorchServe

JSON = {"Content-Type": "application/json"}
# (path, headers, body): each is sent to both gateways; the comment says why it is here.
REQUESTS: list[tuple[str, dict[str, str], bytes]] = [
    ("/generate", JSON, b'{"passage": "I are a boy"}'),  # the lane's
    ("/generate/batch", JSON, b'{"passages": ["I are a boy", "I am a boy"]}'),
    ("/predict", JSON, b'{"text": "great app"}'),
    ("/predict/batch", JSON, b'{"texts": ["great app", "it crashes", "meh"]}'),
    ("/generate", {"Content-Type": "application/json; charset=utf-8"}, b'{"passage": "caf\xc3\xa9"}'),
    ("/generate", {**JSON, "X-Model-Version": "2.0"}, b'{"passage": "pinned"}'),
    ("/generate", {**JSON, "X-Model-Version": "9.9"}, b'{"passage": "not registered"}'),  # 404 from TorchServe
    ("/generate", {**JSON, "X-Client-Key": "user-42"}, b'{"passage": "sticky"}'),
    ("/generate", JSON, b'{"passage": "\\ud83d\\ude00 \\u00e9"}'),  # escapes
    ("/generate", JSON, b'{"passage": "first", "passage": "last"}'),  # a key twice: both parsers keep the last
    ("/generate", JSON, b' \t{"passage": "padded"}\r\n'),
    # FastAPI's: content types
    ("/generate", {}, b'{"passage": "no content type"}'),
    ("/generate", {"Content-Type": "text/plain"}, b'{"passage": "text"}'),
    ("/generate", {"Content-Type": "Application/JSON"}, b'{"passage": "letter case"}'),
    ("/generate", {"Content-Type": "application/vnd.api+json"}, b'{"passage": "+json"}'),
    # FastAPI's: bodies
    ("/generate", JSON, b""),
    ("/generate", JSON, b"\xef\xbb\xbf" + b'{"passage": "a BOM: the json module reads it"}'),
    ("/generate", JSON, b'{"passage": "not UTF-8 \xff"}'),
    ("/generate", JSON, b'{"passage": "\\ud800"}'),  # a lone surrogate
    ("/generate", JSON, b'{"passage": "trailing"} x'),
    ("/generate", JSON, b'{"passage": "tab\tinside"}'),
    ("/generate", JSON, b'{"passage": "   "}'),
    ("/generate", JSON, b'{"passage": "' + b"x" * 201 + b'"}'),
    ("/generate", JSON, b'{"passage": "a", "extra": 1}'),
    ("/generate", JSON, b'{"passage": 1}'),
    ("/generate", JSON, b'["I are a boy"]'),
    ("/generate", JSON, b"null"),
    ("/generate/batch", JSON, b'{"passages": []}'),
    ("/generate/batch", JSON, b'{"passages": ["a", "b", "c", "d", "e"]}'),
    ("/predict", JSON, b'{"passage": "the other route\'s field"}'),
    # FastAPI's: headers
    ("/generate", {**JSON, "X-Model-Version": "x y"}, b'{"passage": "bad version"}'),
    ("/generate", {**JSON, "X-Model-Version": ""}, b'{"passage": "empty version"}'),
    ("/generate", {**JSON, "X-Client-Key": "a" * 129}, b'{"passage": "long key"}'),
    ("/generate?unused=1", JSON, b'{"passage": "a query string"}'),
    ("/generate/", JSON, b'{"passage": "a trailing slash"}'),
    ("/Generate", JSON, b'{"passage": "letter case in the path"}'),
]
# Headers sent twice (a dict cannot hold them).
TWICE: list[tuple[str, list[tuple[str, str]], bytes]] = [
    ("/generate", [("Content-Type", "application/json"), ("Content-Type", "application/json")], b'{"passage": "a"}'),
    ("/generate", [*JSON.items(), ("X-Model-Version", "2.0"), ("X-Model-Version", "1.0")], b'{"passage": "b"}'),
    ("/generate", [*JSON.items(), ("X-Client-Key", "k1"), ("X-Client-Key", "k2")], b'{"passage": "c"}'),
]


@pytest.fixture
def gateways(settings: Settings, upstream: FakeTorchServe) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        TestClient(create_app(settings, transport=httpx.MockTransport(upstream)), raise_server_exceptions=False) as a,
        TestClient(
            create_app(settings, transport=httpx.MockTransport(upstream), fast_lane=False),
            raise_server_exceptions=False,
        ) as b,
    ):
        yield a, b


def answer(response: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What a client gets: status, headers (in order) and body (``response``: the test client's response type)."""
    return response.status_code, response.headers.raw, response.content


def both(
    gateways: tuple[TestClient, TestClient], upstream: FakeTorchServe, method: str, path: str, **kwargs: Any
) -> None:
    """The same request to both gateways (the same request id): the same answer, the same calls to TorchServe."""
    headers = [*httpx.Headers(kwargs.pop("headers", {})).raw, (b"X-Request-ID", b"the-same-id")]
    answers, calls = [], []
    for gateway in gateways:
        before = len(upstream.requests)
        answers.append(answer(gateway.request(method, path, headers=headers, follow_redirects=False, **kwargs)))
        calls.append([(r.url.path, r.headers.get("X-Model-Version"), r.content) for r in upstream.requests[before:]])
    assert answers[0] == answers[1], (method, path, headers)
    assert calls[0] == calls[1], (method, path, headers)


def counts(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter and histogram count in /metrics (durations differ from run to run; counts must not)."""
    found = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count")):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_every_request_is_answered_as_fastapi_answers_it(
    gateways: tuple[TestClient, TestClient], upstream: FakeTorchServe
) -> None:
    for path, headers, body in REQUESTS:
        both(gateways, upstream, "POST", path, headers=headers, content=body)
    for path, pairs, body in TWICE:
        both(gateways, upstream, "POST", path, headers=pairs, content=body)
    for method in ("GET", "PUT", "HEAD", "OPTIONS"):
        both(gateways, upstream, method, "/generate", headers=JSON)
    # from each gateway: the first 11, two other JSON types, the BOM, the query string and the 3 with a header twice
    assert len(upstream.predictions) == 2 * (11 + 7)
    lane, fastapi = gateways
    assert counts(lane) == counts(fastapi)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, b'{"code": 503, "type": "ServiceUnavailableException", "message": "No worker is available"}'),
        (500, b'{"code": 500, "type": "InternalServerException", "message": "Worker died."}'),
        (200, b'{"label": "acceptable", "probabilities": {"acceptable": 1.7}}'),  # unreadable: a probability > 1
        (200, b'{"label": "x", "probabilities": {"x": 0.5, "y": 0.5}}'),  # outside the contract: no "acceptable"
        (400, b'{"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}'),
    ],
)
def test_torchserve_failures_are_answered_as_fastapi_answers_them(
    gateways: tuple[TestClient, TestClient], upstream: FakeTorchServe, status: int, body: bytes
) -> None:
    upstream.fail = lambda request: httpx.Response(status, content=body, headers=JSON)
    both(gateways, upstream, "POST", "/generate", headers=JSON, content=b'{"passage": "I are a boy"}')
    lane, fastapi = gateways
    assert counts(lane) == counts(fastapi)


class Recorder:
    """FastAPI's place behind the lane: records what reaches it and answers 299."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def call(lane: FastLane, client: TorchServeClient, path: str, headers: list[tuple[bytes, bytes]],
         chunks: list[bytes]) -> list[Message]:  # fmt: skip
    """One request to the lane, its body in ``chunks``; the messages it sent."""
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": headers,
             "state": {"torchserve": client}}  # fmt: skip
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(lane(scope, receive, send))
    return sent


def test_the_lane_answers_plain_requests_itself_and_passes_the_rest_with_their_bodies(
    settings: Settings, upstream: FakeTorchServe
) -> None:
    transport = httpx.MockTransport(upstream)
    client = TorchServeClient(settings, httpx.AsyncClient(transport=transport), wire=HttpxWire(transport))
    watcher, metrics = StateWatcher(None), Metrics()
    shadow = Shadow(watcher, metrics.shadow, timeout_s=1.0, max_in_flight=1)
    state = State({"chooser": VersionChooser(watcher), "metrics": metrics, "shadow": shadow})
    behind = Recorder()
    lane = FastLane(behind, routes=inference_routes(settings), state=state)
    json_type = [(b"content-type", b"application/json")]

    sent = call(lane, client, "/generate", json_type, [b'{"passage": "I are a boy"}'])
    assert (sent[0]["status"], b'"prob"' in sent[1]["body"]) == (200, True)
    assert (behind.bodies, len(upstream.predictions)) == ([], 1)

    sent = call(lane, client, "/generate", json_type, [b'{"passage": ', b'"in two parts"}'])  # not read by the lane
    assert (sent[0]["status"], behind.bodies) == (299, [b'{"passage": "in two parts"}'])
    sent = call(lane, client, "/generate", json_type, [b'{"passage": "   "}'])  # refused: FastAPI writes the 422
    assert (sent[0]["status"], behind.bodies[-1]) == (299, b'{"passage": "   "}')
    sent = call(lane, client, "/models", json_type, [b"{}"])
    assert (sent[0]["status"], behind.bodies[-1]) == (299, b"{}")
    assert len(upstream.predictions) == 1
