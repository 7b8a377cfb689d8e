"""Least privilege against a real TorchServe: the launcher's inference-only key file (stack/inference_key.py) kept
current on renewal, a gateway that serves and reports ready with it alone, and what a management key can register
(a directory anywhere TorchServe's user can read: the reason that key never leaves TorchServe's container)."""

from __future__ import annotations

import json
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.settings import Settings
from stack.inference_key import InferenceKeyPublisher
from stack.management import Management, ManagementError
from stack.torchserve import TorchServe
from tests.gateway.server import running_gateway

pytestmark = pytest.mark.integration


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_gateway_with_the_inference_key_alone_survives_renewal(
    torchserve_factory: Callable[[Path], TorchServe], tiny_store: Path, tmp_path: Path
) -> None:
    ts = torchserve_factory(tiny_store)
    out = tmp_path / "keys" / "inference_key.json"
    publisher = InferenceKeyPublisher(ts.key_file, out, ts.management_url, every_s=0)
    publisher.tick()
    published = json.loads(out.read_text())
    assert list(published) == ["inference"]
    assert published["inference"]["key"] == ts.keys()["inference"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    with pytest.raises(ManagementError):  # nothing in it opens the management API
        Management(ts.management_url, out).models()

    settings = Settings.model_validate(
        {
            "inference_url": ts.inference_url,
            "management_url": ts.management_url,
            "key_file": out,
            "ready_probe": "inference",
            "renew_expired_keys": False,
        }
    )
    with running_gateway(settings) as url:
        assert httpx.get(f"{url}/ready", timeout=30).json()["models"] == {"cola": "READY", "sentiment": "READY"}
        old = published["inference"]["key"]
        publisher.renew_before_s = 10**9  # every key is "about to expire": renew now
        publisher.tick()
        new = json.loads(out.read_text())["inference"]["key"]
        assert new != old
        assert new == ts.keys()["inference"]
        stale = httpx.post(f"{ts.inference_url}/predictions/cola", json={"text": "x"}, headers=bearer(old), timeout=30)
        assert stale.status_code == 400
        assert "InvalidKey" in stale.text
        answers = [httpx.post(f"{url}/generate", json={"passage": f"s {i}"}, timeout=30) for i in range(5)]
        assert [a.status_code for a in answers] == [200] * 5


def test_a_management_key_registers_any_readable_directory(
    torchserve_factory: Callable[[Path], TorchServe], tiny_store: Path, tmp_path: Path
) -> None:
    """TorchServe 0.12 registers a directory path outside the store (allowed_urls does not apply): whoever holds
    the management key can run code from any directory the TorchServe user can read. The inference key cannot."""
    ts = torchserve_factory(tiny_store)
    outside = tmp_path / "outside"
    with zipfile.ZipFile(tiny_store / "cola-1.0.mar") as archive:
        archive.extractall(outside)
    params = {"url": str(outside), "model_name": "outside", "initial_workers": 1, "synchronous": "true"}
    refused = httpx.post(f"{ts.management_url}/models", params=params, headers=bearer(ts.keys()["inference"]))
    assert refused.status_code == 400
    assert "InvalidKey" in refused.text
    accepted = httpx.post(
        f"{ts.management_url}/models", params=params, headers=bearer(ts.keys()["management"]), timeout=120
    )
    assert accepted.status_code == 200, accepted.text
    listed = httpx.get(f"{ts.management_url}/models", headers=bearer(ts.keys()["management"])).json()
    assert "outside" in {m["modelName"] for m in listed["models"]}
