"""Keys that really expire: a TorchServe whose keys live 6 s (``token_expiration_min=0.1``: TorchServe 0.12 reads the
setting as a number of minutes, fractions included, and refuses an expired key with 400 InvalidKeyException). The
management client of the launcher and publish CLI (stack/management.py) and the gateway renew them with the API key
and fail no call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stack.management import Management
from stack.torchserve import CONFIG, TorchServe
from tests.gateway.server import private_torchserve, running_gateway, settings_for

pytestmark = pytest.mark.integration

EXPIRY_MIN = 0.1  # 6 s


@pytest.fixture
def expiring(tmp_path: Path, tiny_store: Path) -> Iterator[TorchServe]:
    config = tmp_path / "config.properties"
    config.write_text(f"{CONFIG.read_text()}\ntoken_expiration_min={EXPIRY_MIN}\n")
    with private_torchserve(tiny_store, tmp_path / "run", config=config) as ts:  # registering renews already
        yield ts


def refused(ts: TorchServe, kind: str, key: str) -> bool:
    headers = {"Authorization": f"Bearer {key}"}
    if kind == "management":
        response = httpx.get(f"{ts.management_url}/models", headers=headers, timeout=10)
    else:
        response = httpx.post(f"{ts.inference_url}/predictions/cola", json={"text": "x"}, headers=headers, timeout=10)
    if response.status_code == 200:
        return False
    assert (response.status_code, "InvalidKeyException" in response.text) == (400, True), response.text
    return True


def wait_until_expired(ts: TorchServe, kind: str) -> str:
    """The key of ``kind`` now in the file, once TorchServe itself refuses it (polled, with a deadline)."""
    key = ts.keys()[kind]
    deadline = time.monotonic() + EXPIRY_MIN * 60 + 30
    while not refused(ts, kind, key):
        assert time.monotonic() < deadline, f"the {kind} key did not expire"
        time.sleep(0.25)
    return key


def test_the_management_client_renews_an_expired_key(expiring: TorchServe) -> None:
    management = Management(expiring.management_url, expiring.key_file)
    for _ in range(2):  # expired twice: each renewal's key expires in turn
        old = wait_until_expired(expiring, "management")
        assert sorted(management.models()) == ["cola", "sentiment"]
        new = expiring.keys()["management"]
        assert new != old
        assert not refused(expiring, "management", new)


def test_the_gateway_renews_expired_keys_and_fails_no_request(expiring: TorchServe) -> None:
    with running_gateway(settings_for(expiring)) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.post("/generate", json={"passage": "before"}).status_code == 200
        for _ in range(2):
            old = wait_until_expired(expiring, "inference")
            answers = [client.post("/generate", json={"passage": f"after {i}"}) for i in range(5)]
            answers.append(client.post("/predict/batch", json={"texts": ["a", "b"]}))
            assert [a.status_code for a in answers] == [200] * 6
            assert expiring.keys()["inference"] != old
        wait_until_expired(expiring, "management")
        ready = client.get("/ready")  # readiness reads worker status with the management key
        assert (ready.status_code, ready.json()["ready"]) == (200, True)
