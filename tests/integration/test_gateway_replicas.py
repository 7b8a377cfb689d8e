"""Two real TorchServe instances (own run directories, keys and ports) behind one real gateway with explicit
replicas: requests are spread over both (counted by each TorchServe's own metrics), one is killed mid-traffic
and no request started after it died fails, /ready stays 200 with one replica and is 503 with none."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.settings import Settings
from stack.torchserve import TorchServe
from tests.gateway.server import running_gateway

pytestmark = pytest.mark.integration

CLIENTS = 4


def inference_requests(ts: TorchServe) -> float:
    """``ts_inference_requests_total`` of one TorchServe, summed over its labels (its own metrics port)."""
    text = httpx.get(f"{ts.metrics_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ts_inference_requests"))


def replicas_of(*instances: TorchServe) -> Settings:
    replicas = [
        {"inference_url": ts.inference_url, "management_url": ts.management_url, "key_file": str(ts.key_file)}
        for ts in instances
    ]
    return Settings.model_validate({"replicas": replicas, "retry_after_s": 3})


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f}s")
        time.sleep(0.02)


def refuses(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    status: int  # 0: the gateway did not answer


def test_requests_spread_over_two_replicas_and_fail_over_when_one_dies(
    torchserve_factory: Callable[[Path], TorchServe], tiny_store: Path
) -> None:
    with ThreadPoolExecutor(2) as pool:  # both start at once: half the wait
        first, second = pool.map(torchserve_factory, [tiny_store, tiny_store])
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def traffic(base_url: str, index: int) -> None:
        path, body = ("/generate", {"passage": "I are a boy"}) if index % 2 else ("/predict", {"text": "nice app"})
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status = client.post(path, json=body).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    outcomes.append(Outcome(started, time.monotonic(), status))

    def done(*, started_after: float = 0.0) -> int:
        with lock:
            return sum(o.started > started_after for o in outcomes)

    with running_gateway(replicas_of(first, second)) as base_url, httpx.Client(base_url=base_url, timeout=30) as gw:
        before = [inference_requests(ts) for ts in (first, second)]
        spread = [gw.post("/generate", json={"passage": f"text {i}"}).status_code for i in range(20)]
        wait_for(
            lambda: [inference_requests(ts) for ts in (first, second)] == [b + 10 for b in before],
            timeout=10,
            what="10 requests counted by each TorchServe",
        )
        both_ready = gw.get("/ready")

        threads = [threading.Thread(target=traffic, args=(base_url, i)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: done() >= 20, timeout=30, what="20 requests before the kill")
            assert first.process is not None
            survivor_before = inference_requests(second)
            killed_at = time.monotonic()
            os.killpg(first.process.pid, signal.SIGKILL)  # a crash: no graceful shutdown
            wait_for(lambda: refuses(first.ports.inference), timeout=10, what="the killed replica refusing")
            dead_at = time.monotonic()
            wait_for(lambda: done(started_after=dead_at) >= 40, timeout=60, what="traffic after")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        one_ready = gw.get("/ready")
        after = done(started_after=dead_at)
        wait_for(  # requests answered since the kill include those sent after it; counted a moment after answering
            lambda: inference_requests(second) - survivor_before >= after,
            timeout=10,
            what=f"the survivor counting the {after} requests sent after the kill",
        )
        second.stop()
        none_ready = gw.get("/ready")
        none_up = gw.post("/generate", json={"passage": "nobody"})

    assert spread == [200] * 20  # and exactly 10 on each TorchServe (the wait above)
    assert (both_ready.status_code, both_ready.json()["replicas"]) == (200, {"ready": 2, "known": 2})

    after_kill = [o for o in outcomes if o.started > dead_at]
    in_flight = [o for o in outcomes if o.started <= dead_at and o.ended >= killed_at]
    failed = [o for o in outcomes if o.status != 200]
    assert len(after_kill) >= 40
    assert [o.status for o in after_kill if o.status != 200] == []  # zero failures once the replica was gone
    assert in_flight  # requests were on the replica as it died ...
    assert failed == []  # ... and none was lost: each cut one was sent once more, to the survivor
    assert sum(o.status == 200 for o in outcomes if o.started < killed_at) >= 20 - CLIENTS

    assert (one_ready.status_code, one_ready.json()["replicas"]) == (200, {"ready": 1, "known": 2})
    assert (none_ready.status_code, none_ready.json()["replicas"]) == (503, {"ready": 0, "known": 2})
    assert none_ready.headers["Retry-After"] == "3"
    assert (none_up.status_code, none_up.json()["type"], none_up.headers["Retry-After"]) == (503, "unavailable", "3")
    for response in (both_ready, one_ready, none_ready, none_up):
        assert str(first.ports.inference) not in response.text
        assert str(first.run_dir) not in response.text
