"""The local stack (`make start`'s launcher) with archives of the default models' size: a version's whole life under
load with zero failed requests, then a stop and a start that serve the same default. The whole process tree's
resident memory is sampled throughout, and its peak recorded beside the compose figures."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from benchmarks.servers import Stack
from tests.compose.conftest import wait_for
from tests.real_size.conftest import MEASURED, Load
from torchserve_protocol.layout import REPO, key_file_in

pytestmark = pytest.mark.real_size
MiB = 1 << 20


class PeakMemory(threading.Thread):
    """Samples the stack's processes (gateway, TorchServe frontend and workers) twice a second; keeps the peak."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack, self.peak, self.done = stack, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            total = 0
            for processes in self.stack.roles().values():
                for process in processes:
                    try:
                        total += process.memory_info().rss
                    except Exception:  # a worker that exits between the listing and the reading
                        continue
            self.peak = max(self.peak, total)


def publish(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    common = [
        "--management-url", f"http://127.0.0.1:{stack.ports[1]}", "--inference-url", stack.inference_url,
        "--key-file", str(key_file_in(stack.run_dir)), "--model-store", str(stack.store),
    ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "stack.publish", *common, *argv], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_the_local_stack_publishes_under_load_and_restarts_with_the_same_default(
    stand_ins: Path, data_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("cola-1.0.mar", "sentiment-1.0.mar"):
        shutil.copy2(stand_ins / name, store / name)
    stack = Stack(store=store, run_dir=tmp_path / "run")
    stack.start(timeout=300)
    sampler = PeakMemory(stack)
    sampler.start()
    try:
        shutil.copy2(stand_ins / "cola-2.0.mar", store / "cola-2.0.mar")
        with Load(stack.gateway_url, data_dir) as load:
            wait_for(lambda: load.answered >= 20, timeout=120, what="20 answers before the publish")
            # --force: stand-ins record no validation metric, so the gate skips them (tests/real_size's compose file)
            for argv in (
                ("register", "cola-2.0.mar"), ("set-default", "cola", "2.0", "--force"), ("rollback", "cola"),
                ("canary", "cola", "2.0", "--percent", "10", "--force"), ("promote", "cola", "--force"),
                ("unregister", "cola", "1.0"),
            ):  # fmt: skip
                before = load.answered
                done = publish(stack, *argv)
                assert done.returncode == 0, done.stderr
                wait_for(lambda b=before: load.answered >= b + 20, timeout=120, what=f"20 answers after {argv[0]}")
        assert load.failures() == {}
        assert {"1.0", "2.0"} <= set(load.versions)
        MEASURED["local"] = {
            "publish_under_load": {"answered": load.answered, "failed": 0},
            "peak_rss_bytes": sampler.peak,
        }
    finally:
        sampler.done.set()
        stack.stop()
    stack = Stack(store=store, run_dir=tmp_path / "run-again")
    stack.start(timeout=300)
    try:
        answers = [httpx.post(f"{stack.gateway_url}/generate", json={"passage": f"a dog {i}"}) for i in range(10)]
        assert {(a.status_code, a.headers["X-Model-Version"]) for a in answers} == {(200, "2.0")}
    finally:
        stack.stop()
