"""The real gateway while TorchServe changes under it: inference key rotation mid-traffic (zero failed requests),
TorchServe stopped (503 + Retry-After, not ready) and started again on the same ports and key file (recovery)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from stack.torchserve import TorchServe
from tests.conftest import free_ports, management_client
from tests.gateway.server import private_torchserve, running_gateway, settings_for

pytestmark = pytest.mark.integration

ROTATIONS = 3
CLIENTS = 4


def rotate_inference_key(ts: TorchServe) -> str:
    old = ts.keys()["inference"]
    response = httpx.post(
        f"{ts.management_url}/token",
        params={"type": "inference"},
        headers={"Authorization": f"Bearer {ts.keys()['API']}"},
        timeout=10,
    )
    response.raise_for_status()
    new = ts.keys()["inference"]
    assert new != old
    return old


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f}s")
        time.sleep(0.02)


def test_key_rotation_mid_traffic_fails_no_request(
    tmp_path: Path, tiny_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.replicas")  # where Replica retries a rejected key
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def traffic(base_url: str, index: int) -> None:
        path, body = ("/generate", {"passage": "I are a boy"}) if index % 2 else ("/predict", {"text": "nice app"})
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while not stop.is_set():
                try:
                    status = client.post(path, json=body).status_code
                except httpx.HTTPError as exc:  # counted as a failure, never raised in the thread
                    status = 0
                    errors.append(repr(exc))
                with lock:
                    statuses[status] += 1

    def total() -> int:
        with lock:
            return sum(statuses.values())

    with private_torchserve(tiny_store, tmp_path / "run") as ts, running_gateway(settings_for(ts)) as base_url:
        threads = [threading.Thread(target=traffic, args=(base_url, i)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(ROTATIONS):
                seen = total()
                wait_for(lambda seen=seen: total() >= seen + 20, timeout=30, what="20 more requests")
                old = rotate_inference_key(ts)
            wait_for(lambda: total() >= seen + 40, timeout=30, what="traffic after the last rotation")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        stale = httpx.post(
            f"{ts.inference_url}/predictions/cola",
            json={"text": "x"},
            headers={"Authorization": f"Bearer {old}"},
            timeout=10,
        )

    assert stale.status_code == 400  # the rotations really revoked the old keys
    assert "InvalidKey" in stale.text
    assert errors == []
    assert set(statuses) == {200}, statuses
    assert statuses[200] >= ROTATIONS * 20
    retries = [r for r in caplog.records if "rejected the inference key" in r.getMessage()]
    assert len(retries) >= ROTATIONS  # the retry path really ran (once per in-flight request per rotation)


def test_torchserve_down_is_503_then_recovers(tmp_path: Path, tiny_store: Path) -> None:
    ports = free_ports()
    run_dir = tmp_path / "run"
    with private_torchserve(tiny_store, run_dir, ports=ports) as ts:
        settings = settings_for(ts, retry_after_s=7)
        with running_gateway(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as gateway:
            assert gateway.post("/generate", json={"passage": "before"}).status_code == 200
            ts.stop()

            down = gateway.post("/generate", json={"passage": "during"})
            down_batch = gateway.post("/predict/batch", json={"texts": ["during"]})
            not_ready = gateway.get("/ready")
            assert gateway.get("/health").status_code == 200  # the process itself is fine

            with private_torchserve(tiny_store, run_dir, ports=ports):  # new keys in the same key file
                after = [gateway.post("/generate", json={"passage": "after"}) for _ in range(3)]
                after_predict = gateway.post("/predict", json={"text": "after"})
                ready = gateway.get("/ready")

    for response in (down, down_batch):
        assert (response.status_code, response.json()["type"]) == (503, "unavailable")
        assert response.headers["Retry-After"] == "7"
    assert not_ready.status_code == 503
    assert not_ready.json()["ready"] is False
    assert not_ready.headers["Retry-After"] == "7"
    assert [r.status_code for r in after] == [200, 200, 200]
    assert after_predict.status_code == 200
    assert ready.status_code == 200


@pytest.mark.parametrize("probe", ["management", "inference"])
def test_ready_names_the_model_whose_default_has_no_worker_that_answers(
    probe: str, tmp_path: Path, tiny_store: Path
) -> None:
    """The default version of cola loses every worker (scaled to 0 on a real TorchServe): /ready answers 503 and
    names cola, by either probe; with its workers back it is ready again."""
    with (
        private_torchserve(tiny_store, tmp_path / "run") as ts,
        running_gateway(settings_for(ts, ready_probe=probe, read_timeout_s=5.0)) as base_url,
    ):
        management = management_client(ts)
        assert httpx.get(f"{base_url}/ready", timeout=30).status_code == 200
        management.scale("cola", "1.0", 0)
        down = httpx.get(f"{base_url}/ready", timeout=30)
        assert down.status_code == 503
        assert down.json()["models"]["sentiment"] == "READY"
        assert down.json()["models"]["cola"] != "READY"
        assert down.json()["error"].startswith("cola: ")
        management.scale("cola", "1.0", 1)
        assert httpx.get(f"{base_url}/ready", timeout=30).status_code == 200
