"""Gateway tests run the real app (lifespan included, via Starlette's TestClient) against a fake TorchServe: an
``httpx.MockTransport`` handler that speaks TorchServe's inference/management HTTP (keys, versions, errors)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.settings import Settings

LABELS = {"cola": ("acceptable", "unacceptable"), "sentiment": ("positive", "negative", "neutral")}  # not index order
INVALID_KEY = {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name{labels}`` in Prometheus text (parsed: the text must be valid), or ``None``."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


def write_keys(path: Path, *, inference: str, management: str = "mgmt", expires: str = "2999-01-01T00:00:00Z") -> None:
    path.write_text(
        json.dumps(
            {
                "management": {"key": management, "expiration time": expires},
                "inference": {"key": inference, "expiration time": expires},
                "API": {"key": "api-key"},
            }
        )
    )


def fake_prediction(model: str, text: str) -> dict[str, Any]:
    """Deterministic per text; labels listed in an order unlike the index order, so mapping by name is tested."""
    labels = LABELS[model]
    weights = [1.0 + (len(text) * (i + 1)) % 7 for i in range(len(labels))]
    total = sum(weights)
    probs = {label: w / total for label, w in zip(labels, weights, strict=True)}
    return {"label": max(probs, key=probs.__getitem__), "probabilities": probs}


@dataclass
class FakeTorchServe:
    """Programmable upstream. ``fail`` (if set) answers or raises for prediction calls instead of the model."""

    key_file: Path
    inference_key: str = "inf-1"
    management_key: str = "mgmt"
    versions: dict[str, list[str]] = field(default_factory=lambda: {"cola": ["1.0", "2.0"], "sentiment": ["1.0"]})
    ready: dict[str, bool] = field(default_factory=lambda: {"cola": True, "sentiment": True})
    fail: Callable[[httpx.Request], httpx.Response] | None = None
    requests: list[httpx.Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        write_keys(self.key_file, inference=self.inference_key, management=self.management_key)

    @property
    def predictions(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.startswith("/predictions/")]

    def rotate(self, kind: str = "inference", *, write_file: bool = True) -> str:
        """What ``POST /token?type=<kind>`` does: a new key in memory, then (unless told not to) in the file."""
        attribute = f"{kind}_key"
        setattr(self, attribute, f"{kind}-{len(self.requests)}")
        if write_file:
            write_keys(self.key_file, inference=self.inference_key, management=self.management_key)
        return str(getattr(self, attribute))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        path = request.url.path
        if path == "/token":
            if token != "api-key":
                return httpx.Response(400, json=INVALID_KEY)
            self.rotate(request.url.params["type"])
            return httpx.Response(200, json={"message": "key regenerated"})
        if path.startswith("/models/"):
            if token != self.management_key:
                return httpx.Response(400, json=INVALID_KEY)
            name = path.split("/")[2]
            if name not in self.versions:
                return httpx.Response(404, json={"code": 404, "type": "ModelNotFoundException", "message": "nope"})
            status = "READY" if self.ready.get(name) else "UNLOADING"
            return httpx.Response(200, json=[{"modelName": name, "workers": [{"id": "9000", "status": status}]}])
        if token != self.inference_key:
            return httpx.Response(400, json=INVALID_KEY)
        if self.fail is not None:
            return self.fail(request)
        _, _, model, *pinned = path.split("/")
        version = pinned[0] if pinned else self.versions[model][0]
        if version not in self.versions.get(model, []):
            message = f"Model version: {version} does not exist for model: {model}"
            return httpx.Response(404, json={"code": 404, "type": "ModelVersionNotFoundException", "message": message})
        body = json.loads(request.content)
        answer = (
            [fake_prediction(model, t) for t in body["texts"]]
            if "texts" in body
            else fake_prediction(model, body["text"])
        )
        headers = {"X-Model-Name": model, "X-Model-Version": version}
        return httpx.Response(200, json=answer, headers=headers)


@pytest.fixture
def upstream(tmp_path: Path) -> FakeTorchServe:
    return FakeTorchServe(key_file=tmp_path / "key_file.json")


@pytest.fixture
def settings(upstream: FakeTorchServe) -> Settings:
    return Settings(
        key_file=upstream.key_file, max_text_chars=200, max_batch_items=4, max_body_bytes=4096, key_refresh_wait_s=0.2
    )


@pytest.fixture
def client(settings: Settings, upstream: FakeTorchServe) -> Iterator[TestClient]:
    app = create_app(settings, transport=httpx.MockTransport(upstream))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
