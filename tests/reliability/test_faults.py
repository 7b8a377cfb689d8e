"""Faults injected under light load into a real stack: a TorchServe worker killed, TorchServe stopped and started
again, an answer slower than the gateway's read timeout. Token rotation and expiry under load are covered by
tests/integration/test_gateway_resilience.py and not repeated here."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from gateway.metrics import RETRY_REASONS
from stack.torchserve import TorchServe
from tests.conftest import free_ports, management_client
from tests.gateway.conftest import sample
from tests.gateway.server import private_torchserve, running_gateway, settings_for
from tests.reliability.conftest import assert_error_body

pytestmark = pytest.mark.integration

READ_TIMEOUT_S = 10.0
KILL_DEADLINE_S = 30.0  # the kill test's read timeout: a replacement worker loads in 4-8 s here, the retry waits
RETRY_AFTER_S = 3


@dataclass
class Load:
    """Clients sending /generate and /predict back to back; every answer's status and duration is kept."""

    answers: list[tuple[float, int, float, str]] = field(default_factory=list)  # (t, status, seconds, type)
    stop: threading.Event = field(default_factory=threading.Event)
    deadline_s: float = READ_TIMEOUT_S  # the gateway's read timeout: no answer may take longer

    def run(self, base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=self.deadline_s + 10) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                path, body = (
                    ("/generate", {"passage": "a short one"}) if len(self.answers) % 2 else ("/predict", {"text": "ok"})
                )
                response = client.post(path, json=body)
                kind = ""
                if response.status_code != 200:
                    kind = assert_error_body(response)["type"]
                    if response.status_code == 503:
                        assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
                self.answers.append((started, response.status_code, time.monotonic() - started, kind))
                time.sleep(0.02)

    def statuses(self, since: float = 0.0) -> Counter[int]:
        return Counter(status for t, status, _, _ in self.answers if t >= since)


@contextmanager
def under_load(base_url: str, clients: int = 2, *, deadline_s: float = READ_TIMEOUT_S) -> Iterator[Load]:
    load = Load(deadline_s=deadline_s)
    threads = [threading.Thread(target=load.run, args=(base_url,), daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=deadline_s + 15)


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout:.0f}s")
        time.sleep(0.1)


def worker_pids(ts: TorchServe, model: str) -> list[int]:
    """Pids of the READY workers of ``model``'s default version, from the management API."""
    described = management_client(ts).request("GET", f"/models/{model}").json()
    return [int(w["pid"]) for entry in described for w in entry["workers"] if w.get("status") == "READY"]


def check_bounded(load: Load) -> None:
    assert load.answers, "the load clients sent nothing"
    assert set(load.statuses()) <= {200, 503}, load.statuses()
    slowest = max(seconds for _, _, seconds, _ in load.answers)
    assert slowest < load.deadline_s + 2, f"an answer took {slowest:.1f}s"


def cola_requests_seen(ts: TorchServe) -> float:
    """TorchServe's count of cola inference requests received (its Prometheus metrics port)."""
    text = httpx.get(f"{ts.metrics_url}/metrics", timeout=5).text
    counts = [line for line in text.splitlines() if line.startswith("ts_inference_requests_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in counts if 'model_name="cola"' in line)


def retries_counted(base_url: str) -> int:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    return sum(int(sample(text, "gateway_upstream_retries_total", reason=reason) or 0) for reason in RETRY_REASONS)


def test_a_killed_worker_is_replaced_and_the_gateway_recovers(
    torchserve_factory: Callable[[Path], TorchServe], tiny_store: Path
) -> None:
    """cola runs one worker, so every cola request is on it. It is paused (SIGSTOP) while two clients keep sending
    and three more cola requests arrive (counted by TorchServe), then killed (SIGKILL) with those requests in
    flight on it: TorchServe answers them "Worker died" (or loses them), the gateway sends each once more, and the
    replacement worker answers. Zero lost requests: every answer is 200, none later than the read timeout."""
    ts = torchserve_factory(tiny_store)
    management_client(ts).scale("cola", "1.0", 1)
    settings = settings_for(ts, retry_after_s=RETRY_AFTER_S, read_timeout_s=KILL_DEADLINE_S)
    in_flight: list[Future[httpx.Response]] = []
    with (
        running_gateway(settings) as base_url,
        under_load(base_url, deadline_s=KILL_DEADLINE_S) as load,
        ThreadPoolExecutor(max_workers=3) as pool,
        httpx.Client(base_url=base_url, timeout=KILL_DEADLINE_S + 10) as client,
    ):
        wait_for(lambda: load.statuses()[200] >= 10, timeout=30, what="10 answers before the kill")
        [victim] = worker_pids(ts, "cola")
        assert "model_service_worker" in " ".join(psutil.Process(victim).cmdline())
        seen = cola_requests_seen(ts)
        os.kill(victim, signal.SIGSTOP)
        for i in range(3):
            in_flight.append(pool.submit(client.post, "/generate", json={"passage": f"in flight {i}"}))
        wait_for(lambda: cola_requests_seen(ts) >= seen + 3, timeout=20, what="3 cola requests on the paused worker")
        killed_at = time.monotonic()
        psutil.Process(victim).kill()

        def replaced() -> bool:
            now = worker_pids(ts, "cola")
            return victim not in now and len(now) == 1

        wait_for(replaced, timeout=90, what="a new cola worker in place of the killed one")
        replaced_at = time.monotonic()
        answered = [future.result(timeout=KILL_DEADLINE_S + 10) for future in in_flight]
        wait_for(lambda: load.statuses(since=replaced_at + 0.5)[200] >= 10, timeout=30, what="10 answers after")
        ready = httpx.get(f"{base_url}/ready", timeout=10)
        retried = retries_counted(base_url)

    check_bounded(load)
    assert [r.status_code for r in answered] == [200, 200, 200], [r.text for r in answered]
    assert set(load.statuses()) == {200}, load.statuses()  # zero lost requests, the load's included
    assert retried >= 1  # the requests on the killed worker were sent again
    assert ready.status_code == 200
    during = load.statuses(since=killed_at) - load.statuses(since=replaced_at)
    slowest = max(seconds for _, _, seconds, _ in load.answers)
    print(
        f"\nworker kill: {len(load.answers)} + 3 answers, all 200; gap {replaced_at - killed_at:.1f}s, "
        f"during the gap {dict(during)}, retries {retried}, slowest {slowest:.2f}s"
    )


@pytest.mark.slow
def test_torchserve_restarted_under_load_comes_back_with_the_same_versions(tmp_path: Path, tiny_store: Path) -> None:
    ports, run_dir = free_ports(), tmp_path / "run"

    def versions(ts: TorchServe) -> dict[str, list[tuple[str, bool]]]:
        return {
            model: sorted((d["modelVersion"], d.get("isDefault", False)) for d in management_client(ts).versions(model))
            for model in ("cola", "sentiment")
        }

    with private_torchserve(tiny_store, run_dir, ports=ports) as ts:
        before = versions(ts)
        settings = settings_for(ts, retry_after_s=RETRY_AFTER_S, read_timeout_s=READ_TIMEOUT_S)
        with running_gateway(settings) as base_url, under_load(base_url) as load:
            wait_for(lambda: load.statuses()[200] >= 10, timeout=30, what="10 answers before the stop")
            ts.stop()
            stopped_at = time.monotonic()
            wait_for(lambda: load.statuses(since=stopped_at + 0.2)[503] >= 3, timeout=30, what="503s while down")
            not_ready = httpx.get(f"{base_url}/ready", timeout=10)
            with private_torchserve(tiny_store, run_dir, ports=ports) as again:
                restarted_at = time.monotonic()
                after = versions(again)
                wait_for(lambda: load.statuses(since=restarted_at + 0.5)[200] >= 10, timeout=60, what="recovery")
                ready = httpx.get(f"{base_url}/ready", timeout=10)
                late = load.statuses(since=restarted_at + 0.5)

    check_bounded(load)
    assert not_ready.status_code == 503
    assert not_ready.json()["ready"] is False
    assert ready.status_code == 200
    assert after == before
    assert set(late) == {200}
    print(f"\nrestart: {len(load.answers)} answers: {dict(load.statuses())}")


def test_a_slow_answer_is_504_at_the_gateway_timeout(torchserve: TorchServe) -> None:
    """A read timeout far below the time TorchServe needs for 64 long texts: 504 at the timeout, nothing stuck."""
    texts = [f"{i} " + "long words here " * 300 for i in range(64)]
    settings = settings_for(torchserve, read_timeout_s=0.001)
    with running_gateway(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        started = time.monotonic()
        responses = [client.post("/predict/batch", json={"texts": texts}) for _ in range(3)]
        elapsed = time.monotonic() - started
        assert client.get("/health").status_code == 200

    for response in responses:
        assert response.status_code == 504
        assert assert_error_body(response)["type"] == "timeout"
    assert elapsed < 10
    key = torchserve.keys()["inference"]
    direct = httpx.post(
        f"{torchserve.inference_url}/predictions/sentiment",
        json={"texts": texts[:2]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert direct.status_code == 200  # TorchServe finished the abandoned work and still answers
