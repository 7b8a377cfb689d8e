"""The shadow in the gateway (the real app, a fake TorchServe): copies after the answer, the interleave, the bounds
(timeout, in-flight), drops counted by reason, and the comparison metrics. Real TorchServe: tests/integration."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from gateway.shadow import Shadow
from tests.gateway.conftest import FakeTorchServe, fake_prediction, sample
from torchserve_protocol.store import ModelState, Share, State, VersionState, write_state

PASSAGE = {"passage": "The dog is happy."}
PAIR = {"model": "cola", "version": "1.0", "shadow": "2.0"}
Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def write_shadow(store: Path, version: str | None, percent: float = 100.0) -> None:
    """cola 1.0 is the default, ``version`` (if any) its shadow at ``percent``."""
    versions = {v: VersionState(workers=1) for v in ("1.0", version or "1.0")}
    shadow = Share(version=version, percent=percent) if version else None
    cola = ModelState(default="1.0", versions=versions, shadow=shadow)
    write_state(store, State(models={"cola": cola}))


def answering(shadow: Handler) -> Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]:
    """The fake's usual answers, except those of the pinned shadow 2.0, which ``shadow`` gives."""

    def handle(request: httpx.Request) -> httpx.Response | Awaitable[httpx.Response]:
        if request.url.path == "/predictions/cola/2.0":
            return shadow(request)
        model, *pinned = request.url.path.split("/")[2:]
        body = json.loads(request.content)
        answer = [fake_prediction(model, t) for t in body["texts"]] if "texts" in body else fake_prediction(
            model, body["text"]
        )  # fmt: skip
        return httpx.Response(200, json=answer, headers={"X-Model-Version": pinned[0] if pinned else "1.0"})

    return handle


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def make_client(settings: Settings, upstream: FakeTorchServe, store: Path) -> Iterator[Callable[..., TestClient]]:
    opened: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        configured = settings.model_copy(update={"model_store": store, "split_check_s": 0.0, **overrides})
        app = create_app(configured, transport=httpx.MockTransport(upstream))
        client = TestClient(app, raise_server_exceptions=False).__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def settle(client: TestClient) -> str:
    """Wait for the copies in flight; the metrics then."""
    shadow: Shadow = client.app.state.shadow  # type: ignore[attr-defined]
    assert client.portal is not None
    client.portal.call(shadow.settled)
    return client.get("/metrics").text


def shadow_calls(upstream: FakeTorchServe) -> int:
    return sum(r.url.path == "/predictions/cola/2.0" for r in upstream.predictions)


def test_a_100_percent_shadow_changes_no_answer(make_client: Callable[..., TestClient], store: Path,
                                                upstream: FakeTorchServe) -> None:  # fmt: skip
    requests = [("/generate", {"passage": f"text {i}" * i}) for i in range(1, 6)]
    requests += [("/generate/batch", {"passages": ["a", "bb b", "ccc"]}), ("/predict", {"text": "fine"})]
    write_shadow(store, None)
    without = [(r.status_code, r.content) for r in (make_client().post(p, json=b) for p, b in requests)]
    write_shadow(store, "2.0")
    client = make_client()
    with_shadow = [(r.status_code, r.content) for r in (client.post(p, json=b) for p, b in requests)]
    assert with_shadow == without
    text = settle(client)
    assert shadow_calls(upstream) == 6  # the /generate ones; sentiment has no shadow
    assert sample(text, "gateway_shadow_copies_total", **PAIR) == 6
    assert sample(text, "gateway_shadow_compared_total", **PAIR) == 5 + 3  # texts: the batch counts 3
    assert sample(text, "gateway_shadow_agreed_total", **PAIR) == 8  # the fake answers every version alike
    assert sample(text, "gateway_shadow_delta_p_bucket", **PAIR, le="0.001") == 8


def test_the_share_is_exact_and_pinned_requests_are_never_copied(make_client: Callable[..., TestClient], store: Path,
                                                                 upstream: FakeTorchServe) -> None:  # fmt: skip
    write_shadow(store, "2.0", percent=10)
    client = make_client()
    for _ in range(200):
        assert client.post("/generate", json=PASSAGE).status_code == 200
    for _ in range(20):
        assert client.post("/generate", json=PASSAGE, headers={"X-Model-Version": "1.0"}).status_code == 200
    text = settle(client)
    assert shadow_calls(upstream) == 20
    assert sample(text, "gateway_shadow_copies_total", **PAIR) == 20


def test_disagreements_are_counted_exactly(make_client: Callable[..., TestClient], store: Path,
                                           upstream: FakeTorchServe) -> None:  # fmt: skip
    def flipped(request: httpx.Request) -> httpx.Response:
        text = json.loads(request.content)["text"]
        mine = fake_prediction("cola", text)["probabilities"]
        shift = 0.3 if text.startswith("flip") else 0.0  # moves the top label's probability by 0.3
        top = max(mine, key=mine.__getitem__)
        probabilities = {label: p - shift if label == top else p + shift for label, p in mine.items()}
        label = max(probabilities, key=probabilities.__getitem__)
        return httpx.Response(200, json={"label": label, "probabilities": probabilities})

    upstream.fail = answering(flipped)
    write_shadow(store, "2.0")
    client = make_client()
    texts = ["flip one", "keep", "flip two", "keep it", "flip three"]
    firsts = [client.post("/generate", json={"passage": t}) for t in texts]
    assert all(r.status_code == 200 for r in firsts)
    text = settle(client)
    flips = [fake_prediction("cola", t)["probabilities"] for t in texts if t.startswith("flip")]
    changed = sum(max(p.values()) - 0.3 < min(p.values()) + 0.3 for p in flips)  # the label moved with the shift
    assert sample(text, "gateway_shadow_compared_total", **PAIR) == 5
    assert sample(text, "gateway_shadow_agreed_total", **PAIR) == 5 - changed
    assert sample(text, "gateway_shadow_delta_p_bucket", **PAIR, le="0.2") == 2  # the two kept texts
    assert sample(text, "gateway_shadow_delta_p_bucket", **PAIR, le="0.3") == 5
    assert sample(text, "gateway_shadow_delta_p_count", **PAIR) == 5


@pytest.mark.parametrize(
    ("shadow", "reason"),
    [
        (lambda request: httpx.Response(500, json={"code": 500, "type": "InternalServerException", "message": "x"}),
         "error"),
        (lambda request: httpx.Response(200, content=b"not json"), "error"),
        (lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused")), "error"),
    ],
    ids=["500", "unreadable", "refused"],
)  # fmt: skip
def test_a_failing_shadow_costs_clients_nothing_and_is_counted(
    make_client: Callable[..., TestClient], store: Path, upstream: FakeTorchServe, shadow: Handler, reason: str
) -> None:
    upstream.fail = answering(shadow)
    write_shadow(store, "2.0")
    client = make_client()
    assert [client.post("/generate", json=PASSAGE).status_code for _ in range(5)] == [200] * 5
    text = settle(client)
    assert sample(text, "gateway_shadow_copies_total", **PAIR) == 5
    assert sample(text, "gateway_shadow_dropped_total", **PAIR, reason=reason) == 5
    assert sample(text, "gateway_shadow_compared_total", **PAIR) == 0
    assert sample(text, "gateway_model_errors_total", model="cola", version="1.0", role="default", type="bad_gateway") \
        is None  # fmt: skip


def test_an_unregistered_shadow_version_is_dropped_as_an_error(make_client: Callable[..., TestClient],
                                                               store: Path) -> None:  # fmt: skip
    write_shadow(store, "7.0")  # in the state, not in (the fake) TorchServe: 404
    client = make_client()
    assert [client.post("/generate", json=PASSAGE).status_code for _ in range(3)] == [200] * 3
    text = settle(client)
    assert sample(text, "gateway_shadow_dropped_total", model="cola", version="1.0", shadow="7.0", reason="error") == 3


def test_a_slow_shadow_times_out_and_a_busy_one_drops_copies_without_slowing_clients(
    make_client: Callable[..., TestClient], store: Path, upstream: FakeTorchServe
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("cancelled before")

    upstream.fail = answering(slow)
    write_shadow(store, "2.0")
    client = make_client(shadow_timeout_s=0.5, shadow_max_in_flight=2)
    started = time.monotonic()
    statuses = [client.post("/generate", json=PASSAGE).status_code for _ in range(6)]
    elapsed = time.monotonic() - started
    assert statuses == [200] * 6
    assert elapsed < 0.5  # six answers while the shadow holds its copies: nobody waited for them
    text = settle(client)
    assert sample(text, "gateway_shadow_copies_total", **PAIR) == 2
    assert sample(text, "gateway_shadow_dropped_total", **PAIR, reason="timeout") == 2
    assert sample(text, "gateway_shadow_dropped_total", **PAIR, reason="busy") == 4


def test_the_catalogue_shows_the_shadow(make_client: Callable[..., TestClient], store: Path) -> None:
    write_shadow(store, "2.0", percent=25)
    (store / "cola-1.0.mar").write_bytes(b"")
    (store / "cola-2.0.mar").write_bytes(b"")
    cola = make_client().get("/models").json()["models"][0]
    assert (cola["canary"], cola["canary_percent"], cola["shadow"], cola["shadow_percent"]) == (None, 0.0, "2.0", 25.0)
