"""The canary split in the gateway (the real app, a fake TorchServe): the state file, the interleave, sticky client
keys, a canary version that is gone, per-version metrics and their bounds, request ids."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.answers import Classification
from gateway.app import create_app
from gateway.canary import StateWatcher
from gateway.model_metrics import MAX_VERSIONS, ModelMetrics
from gateway.settings import Settings
from tests.gateway.conftest import FakeTorchServe, sample
from torchserve_protocol.store import STATE_FILE, ModelState, Share, State, VersionState, write_state

PASSAGE = {"passage": "The dog is happy."}


def write_canary(store: Path, version: str, percent: float) -> None:
    """A state serving cola 1.0 by default with ``version`` as its canary (sentiment: 1.0 alone)."""
    versions = {v: VersionState(workers=1) for v in ("1.0", version)}
    cola = ModelState(default="1.0", versions=versions, canary=Share(version=version, percent=percent))
    sentiment = ModelState(default="1.0", versions={"1.0": VersionState(workers=1)})
    write_state(store, State(models={"cola": cola, "sentiment": sentiment}))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def split_client(settings: Settings, upstream: FakeTorchServe, store: Path) -> TestClient:
    configured = settings.model_copy(update={"model_store": store, "split_check_s": 0.0})
    return TestClient(create_app(configured, transport=httpx.MockTransport(upstream)), raise_server_exceptions=False)


def served(client: TestClient, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
    versions: Counter[str] = Counter()
    for _ in range(n):
        response = client.post("/generate", json=PASSAGE, headers=headers or {})
        assert response.status_code == 200, response.text
        versions[response.headers["X-Model-Version"]] += 1
    return versions


def test_the_watcher_follows_changes_and_keeps_the_last_good_split(store: Path) -> None:
    watcher = StateWatcher(store, check_s=0.0)
    assert watcher.canaries() == {}
    write_canary(store, "2.0", 10)
    assert watcher.canaries() == {"cola": Share(version="2.0", percent=10.0)}
    (store / STATE_FILE).write_text("{not json")
    assert watcher.canaries() == {"cola": Share(version="2.0", percent=10.0)}
    assert watcher.error is not None
    os.unlink(store / STATE_FILE)
    assert watcher.canaries() == {}


def test_unpinned_requests_split_exactly_and_pinned_ones_never(split_client: TestClient, store: Path) -> None:
    with split_client as client:
        assert served(client, 20) == Counter({"1.0": 20})
        write_canary(store, "2.0", 10)
        assert served(client, 200) == Counter({"1.0": 180, "2.0": 20})
        assert served(client, 30, {"X-Model-Version": "1.0"}) == Counter({"1.0": 30})
        assert client.post("/predict", json={"text": "fine"}).headers["X-Model-Version"] == "1.0"  # other model


def test_a_client_key_is_sticky(split_client: TestClient, store: Path) -> None:
    write_canary(store, "2.0", 50)
    with split_client as client:
        per_key = {key: served(client, 5, {"X-Client-Key": key}) for key in [f"user-{i}" for i in range(20)]}
        assert all(len(versions) == 1 for versions in per_key.values())
        assert {v for versions in per_key.values() for v in versions} == {"1.0", "2.0"}
        bad = client.post("/generate", json=PASSAGE, headers={"X-Client-Key": "no spaces"})
        assert (bad.status_code, bad.json()["type"]) == (422, "invalid_input")


def test_a_canary_version_that_is_gone_sends_its_share_to_the_default(split_client: TestClient, store: Path) -> None:
    write_canary(store, "7.0", 100)
    with split_client as client:
        assert served(client, 5) == Counter({"1.0": 5})


def test_metrics_are_per_version_and_role(split_client: TestClient, store: Path) -> None:
    write_canary(store, "2.0", 50)
    with split_client as client:
        served(client, 10)
        client.post("/generate", json=PASSAGE, headers={"X-Model-Version": "9.9"})
        text = client.get("/metrics").text
    assert sample(text, "gateway_model_requests_total", model="cola", version="2.0", role="canary") == 5
    assert sample(text, "gateway_model_requests_total", model="cola", version="1.0", role="default") == 5
    missing = {"model": "cola", "version": "unknown", "role": "pinned", "type": "model_version_not_found"}
    assert sample(text, "gateway_model_errors_total", **missing) == 1
    assert "9.9" not in text  # the client's pinned string is never a label
    assert sample(text, "gateway_model_confidence_count", model="cola", version="2.0") == 5


def test_model_metrics_bound_the_versions() -> None:
    metrics = ModelMetrics()
    for i in range(MAX_VERSIONS + 10):
        metrics.answered("cola", f"{i}.0", "pinned", 0.01, [Classification(label="a", probabilities={"a": 0.9})])
    assert len(metrics.latency) == MAX_VERSIONS + 1  # the last one is "other"
    assert metrics.requests[("cola", "other", "pinned")] == 10


def test_request_ids_are_kept_or_made_returned_and_sent_on(
    client: TestClient, upstream: FakeTorchServe, caplog: pytest.LogCaptureFixture
) -> None:
    given = client.post("/generate", json=PASSAGE, headers={"X-Request-ID": "abc-123.x"})
    assert given.headers["X-Request-ID"] == "abc-123.x"
    assert upstream.predictions[-1].headers["X-Request-ID"] == "abc-123.x"
    made = client.post("/generate", json=PASSAGE)
    assert len(made.headers["X-Request-ID"]) == 32
    assert upstream.predictions[-1].headers["X-Request-ID"] == made.headers["X-Request-ID"]
    for bad in ("x" * 129, "spaces are bad", "\u00fcn\u00efcode".encode()):
        refused = client.post("/generate", json=PASSAGE, headers={"X-Request-ID": bad})
        assert (refused.status_code, refused.json()["type"]) == (400, "invalid_request_id")
    with caplog.at_level(logging.INFO, logger="gateway.errors"):
        secret = "my secret passage"
        failed = client.post(
            "/generate", json={"passage": secret}, headers={"X-Model-Version": "9.9", "X-Request-ID": "r-1"}
        )
    assert failed.status_code == 404
    assert "request r-1:" in caplog.text
    assert secret not in caplog.text


def test_the_catalogue_needs_a_store(client: TestClient) -> None:
    answer = client.get("/models")
    assert (answer.status_code, answer.json()["type"]) == (503, "unavailable")


def test_an_answer_outside_the_contract_is_that_versions_error(client: TestClient, upstream: FakeTorchServe) -> None:
    wrong = {"label": "x", "probabilities": {"x": 1.0}}  # no "acceptable": /generate cannot answer it
    upstream.fail = lambda request: httpx.Response(200, json=wrong, headers={"X-Model-Version": "1.0"})
    assert client.post("/generate", json=PASSAGE).status_code == 502
    text = client.get("/metrics").text
    bad = {"model": "cola", "version": "1.0", "role": "default", "type": "bad_gateway"}
    assert sample(text, "gateway_model_errors_total", **bad) == 1
    assert "gateway_model_predictions_total{" not in text


def test_more_header_lines_than_max_headers_get_431(client: TestClient, upstream: FakeTorchServe) -> None:
    """nginx bounds the head's bytes, not its lines: the gateway counts them (GATEWAY_MAX_HEADERS) before the app."""
    limit = Settings.model_fields["max_headers"].default
    sent = len(upstream.predictions)
    base = len(client.build_request("GET", "/health").headers)  # what the test client adds itself
    fits = client.get("/health", headers={f"X-{i}": "1" for i in range(limit - base)})
    over = client.post("/generate", json=PASSAGE, headers={f"X-{i}": "1" for i in range(limit - base + 1)})
    assert fits.status_code == 200
    assert (over.status_code, over.json()["type"]) == (431, "headers_too_large")
    assert over.headers["connection"] == "close"
    assert len(upstream.predictions) == sent  # refused before the app
