"""The legacy contracts, the batch forms and version pinning, through the real app against a fake TorchServe."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.gateway.conftest import FakeTorchServe, fake_prediction


def test_generate_keeps_the_legacy_contract(client: TestClient, upstream: FakeTorchServe) -> None:
    response = client.post("/generate", json={"passage": "I are a boy"})

    assert response.status_code == 200
    assert response.json() == {"prob": fake_prediction("cola", "I are a boy")["probabilities"]["acceptable"]}
    assert response.headers["X-Model-Version"] == "1.0"
    [sent] = upstream.predictions
    assert sent.url.path == "/predictions/cola"
    assert json.loads(sent.content) == {"text": "I are a boy"}
    assert sent.headers["Authorization"] == "Bearer inf-1"
    assert sent.headers["Content-Type"] == "application/json"


def test_predict_keeps_the_legacy_contract(client: TestClient, upstream: FakeTorchServe) -> None:
    response = client.post("/predict", json={"text": "great app"})

    assert response.status_code == 200
    body = response.json()
    expected = fake_prediction("sentiment", "great app")
    assert set(body) == {"sentiment", "confidence", "probabilities"}
    assert body["sentiment"] == expected["label"]
    assert body["confidence"] == body["probabilities"][body["sentiment"]]
    assert body["probabilities"] == {k: expected["probabilities"][k] for k in ("negative", "neutral", "positive")}
    assert list(body["probabilities"]) == ["negative", "neutral", "positive"]
    assert upstream.predictions[0].url.path == "/predictions/sentiment"


@pytest.mark.parametrize(
    ("path", "key", "model"), [("/generate/batch", "passages", "cola"), ("/predict/batch", "texts", "sentiment")]
)
def test_batch_is_one_upstream_request_answered_in_order(
    client: TestClient, upstream: FakeTorchServe, path: str, key: str, model: str
) -> None:
    texts = ["a", "bb bb", "ccc ccc ccc", "a"]
    single_path = path.removesuffix("/batch")
    single_key = "passage" if key == "passages" else "text"

    batch = client.post(path, json={key: texts})
    singles = [client.post(single_path, json={single_key: t}).json() for t in texts]

    assert batch.status_code == 200
    assert batch.json() == {"results": singles}
    assert json.loads(upstream.predictions[0].content) == {"texts": texts}
    assert len(upstream.predictions) == 1 + len(texts)


@pytest.mark.parametrize(
    ("pinned", "expected_path"), [("2.0", "/predictions/cola/2.0"), ("1.0", "/predictions/cola/1.0")]
)
def test_version_pinning_by_header(
    client: TestClient, upstream: FakeTorchServe, pinned: str, expected_path: str
) -> None:
    response = client.post("/generate", json={"passage": "x"}, headers={"X-Model-Version": pinned})

    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == pinned
    assert upstream.predictions[-1].url.path == expected_path


def test_batch_routes_pin_versions_too(client: TestClient, upstream: FakeTorchServe) -> None:
    response = client.post("/generate/batch", json={"passages": ["x", "y"]}, headers={"X-Model-Version": "2.0"})

    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "2.0"
    assert upstream.predictions[-1].url.path == "/predictions/cola/2.0"


@pytest.mark.parametrize("version", ["latest", "1.0/../x", "", "1.0.0.0", "v1"])
def test_a_malformed_version_is_refused_before_torchserve(
    client: TestClient, upstream: FakeTorchServe, version: str
) -> None:
    response = client.post("/generate", json={"passage": "x"}, headers={"X-Model-Version": version})

    assert response.status_code == 422
    assert response.json()["type"] == "invalid_input"
    assert "X-Model-Version" in response.json()["error"]
    assert upstream.predictions == []


def test_non_ascii_text_travels_unchanged(client: TestClient, upstream: FakeTorchServe) -> None:
    text = "Ça marche 👍🏽 — отлично, 很好 ✓"

    response = client.post("/predict", json={"text": text})

    assert response.status_code == 200
    assert json.loads(upstream.predictions[0].content) == {"text": text}
