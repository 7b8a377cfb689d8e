"""Version pinning through the real gateway: a TorchServe holding cola 1.0 and 2.0 (different weights)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from stack.torchserve import TorchServe
from tests.conftest import serve_versions
from tests.gateway.server import private_torchserve, running_gateway, settings_for
from tests.tiny_models import COLA_LABELS, make_tiny_classifier
from training.package import package

pytestmark = pytest.mark.integration

PASSAGES = ["I are a boy", "The dog is happy.", "cat the dog a"]


def direct_probs(ts: TorchServe, version: str) -> list[float]:
    response = httpx.post(
        f"{ts.inference_url}/predictions/cola/{version}",
        json={"texts": PASSAGES},
        headers={"Authorization": f"Bearer {ts.keys()['inference']}"},
        timeout=30,
    )
    response.raise_for_status()
    return [row["probabilities"]["acceptable"] for row in response.json()]


def test_pinned_requests_go_to_the_pinned_version(tmp_path: Path, tiny_store: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for archive in ("cola-1.0.mar", "sentiment-1.0.mar"):
        shutil.copy2(tiny_store / archive, store / archive)
    package(make_tiny_classifier(tmp_path / "cola-v2", COLA_LABELS, seed=7), name="cola", store=store, version="2.0")
    serve_versions(store, {"cola": ("2.0", ["1.0", "2.0"]), "sentiment": ("1.0", ["1.0"])})
    with (
        private_torchserve(store, tmp_path / "run") as ts,
        running_gateway(settings_for(ts)) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as gateway,
    ):
        expected = {version: direct_probs(ts, version) for version in ("1.0", "2.0")}
        assert expected["1.0"] != pytest.approx(expected["2.0"], abs=1e-3)  # the two versions are told apart
        answers = {
            pinned: gateway.post(
                "/generate/batch",
                json={"passages": PASSAGES},
                headers={"X-Model-Version": pinned} if pinned else {},
            )
            for pinned in ("1.0", "2.0", None)
        }
        single = gateway.post("/generate", json={"passage": PASSAGES[0]}, headers={"X-Model-Version": "1.0"})
        unknown = gateway.post("/generate", json={"passage": PASSAGES[0]}, headers={"X-Model-Version": "3.0"})

    for pinned, response in answers.items():
        version = pinned or "2.0"
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == version
        assert [r["prob"] for r in response.json()["results"]] == pytest.approx(expected[version], abs=1e-6)
    assert single.headers["X-Model-Version"] == "1.0"
    assert single.json()["prob"] == pytest.approx(expected["1.0"][0], abs=0.03)
    assert (unknown.status_code, unknown.json()["type"]) == (404, "model_version_not_found")
