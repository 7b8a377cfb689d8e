"""The launcher's watch over TorchServe's workers, against a real TorchServe: a killed worker counts as a restart in
workers.json, and the gateway's /metrics shows it (the way a crash loop becomes visible)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from stack.publish import main as publish
from stack.worker_watch import WorkerWatch
from tests.conftest import management_client
from tests.gateway.server import private_torchserve, running_gateway, settings_for
from torchserve_protocol.workers import read_workers, workers_file_beside

pytestmark = pytest.mark.integration


def ready_pids(watch: WorkerWatch, model: str) -> list[int]:
    default = watch.management.default_version(model)
    (described,) = [v for v in watch.management.versions(model) if v["modelVersion"] == default]
    return [w["pid"] for w in described["workers"] if w["status"] == "READY"]


def test_a_killed_worker_is_a_restart_in_the_file_in_publish_list_and_in_the_gateway_metrics(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with private_torchserve(tiny_store, tmp_path / "run") as ts:
        out = workers_file_beside(ts.key_file)
        watch = WorkerWatch(management_client(ts), out, every_s=0.0, clock=lambda: 1000.0)
        watch.tick()
        reading = read_workers(out)
        assert reading is not None
        updated, versions = reading
        assert updated == 1000.0
        assert {(v.model, v.version, v.default, v.restarts) for v in versions} == {
            ("cola", "1.0", True, 0), ("sentiment", "1.0", True, 0)
        }  # fmt: skip
        workers = sum(versions[0].statuses.values())
        assert versions[0].statuses == {"READY": workers}

        (victim, *_) = ready_pids(watch, "cola")
        os.kill(victim, signal.SIGKILL)  # TorchServe starts another worker process in its place
        deadline = time.monotonic() + 60
        while len(ready_pids(watch, "cola")) < workers or victim in ready_pids(watch, "cola"):
            assert time.monotonic() < deadline, "TorchServe did not replace the killed worker"
            time.sleep(0.25)
        watch.tick()
        reading = read_workers(out)
        assert reading is not None
        restarts = {(v.model, v.restarts) for v in reading[1]}
        assert restarts == {("cola", 1), ("sentiment", 0)}

        common = ["--management-url", ts.management_url, "--key-file", str(ts.key_file), "--model-store"]
        assert publish([*common, str(tiny_store), "list"]) == 0
        listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
        assert listing["cola"].endswith("default  restarts=1")
        assert listing["sentiment"].endswith("default  restarts=0")

        with running_gateway(settings_for(ts)) as base_url:
            text = httpx.get(f"{base_url}/metrics", timeout=10).text
        assert 'gateway_torchserve_worker_restarts_total{model="cola",replica="0",version="1.0"} 1.0' in text
        expected = 'gateway_torchserve_workers{default="true",model="cola",replica="0",status="READY",version="1.0"}'
        assert f"{expected} {float(workers)}" in text
