"""The publish CLI against a real TorchServe with the real gateway in front: errors, a zero-downtime switch and
rollback under steady traffic, and a restart that serves the same versions and the same default."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from stack.publish import main as publish
from stack.replica_reports import wait_converged
from stack.torchserve import TorchServe
from tests.conftest import management_client
from tests.gateway.server import private_torchserve, running_gateway, settings_for
from tests.tiny_models import COLA_LABELS, make_tiny_classifier
from torchserve_protocol.layout import temp_in
from torchserve_protocol.store import STATE_FILE, parse_state, read_state_version, write_state
from torchserve_protocol.workers import read_report, workers_file_beside
from training.package import ServingConfig, package

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    store: Path
    run_dir: Path
    incoming: Path  # cola-2.0.mar, built but not yet in the store
    ts: TorchServe

    def publish(self, *argv: str) -> int:
        common = ["--management-url", self.ts.management_url, "--key-file", str(self.ts.key_file)]
        return publish([*common, "--model-store", str(self.store), "--timeout", "120", *argv])


BASE = ("cola-1.0.mar", "sentiment-1.0.mar")


def base_store(root: Path, tiny_store: Path) -> Path:
    store = root / "store"
    store.mkdir()
    for archive in BASE:
        shutil.copy2(tiny_store / archive, store / archive)
    return store


@pytest.fixture(scope="module")
def incoming(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("incoming")
    package(make_tiny_classifier(root / "cola-v2", COLA_LABELS, seed=7), name="cola", store=root, version="2.0")
    return root


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[tuple[Path, TorchServe]]:
    root = tmp_path_factory.mktemp("publish")
    store = base_store(root, tiny_store)
    with private_torchserve(store, root / "run", follow=True) as ts:
        yield store, ts


WORKERS = ServingConfig().min_workers  # the archives' own (model-config.yaml), as a first start records them
START_STATE = {"cola": {"default": "1.0", "history": [], "versions": {"1.0": {"workers": WORKERS}}},
               "sentiment": {"default": "1.0", "history": [], "versions": {"1.0": {"workers": WORKERS}}}}  # fmt: skip


def state_of(store: Path) -> dict[str, object]:
    return dict(json.loads((store / STATE_FILE).read_text())["models"])


@pytest.fixture
def stack(served: tuple[Path, TorchServe], incoming: Path) -> Stack:
    """The shared TorchServe brought back to the same state before every test, whatever ran before (any order):
    cola 1.0 and sentiment 1.0 registered, 1.0 the default, nothing else in the store."""
    store, ts = served
    for path in store.iterdir():
        if path.name not in (*BASE, STATE_FILE):
            if path.is_dir():  # the blocker a test made, should it have been left
                path.rmdir()
            else:
                path.unlink()
    write_state(store, parse_state({"format": 1, "models": START_STATE}))
    found = read_state_version(store)
    assert found is not None

    def no_problem(problems: list[str]) -> None:
        assert not problems

    for name in found[0].models:  # the reconciler brings TorchServe back, and its report says so
        wait_converged(ts.key_file, lambda: found, name, timeout=120, failed=no_problem)
    return Stack(store=store, run_dir=ts.run_dir, incoming=incoming, ts=ts)


def stage_v2(stack: Stack) -> None:
    shutil.copy2(stack.incoming / "cola-2.0.mar", stack.store / "cola-2.0.mar")


def last_line(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_errors_are_one_line_and_exit_1(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert stack.publish("register", "cola-9.0.mar") == 1
    assert "no archive cola-9.0.mar" in last_line(capsys)
    assert stack.publish("register", "cola-1.0.mar") == 1
    assert "cola 1.0 is already registered" in last_line(capsys)
    assert stack.publish("set-default", "cola", "3.0") == 1
    assert "cola has no version '3.0' registered (registered: 1.0; `register cola-3.0.mar` adds it)" in last_line(
        capsys
    )
    assert stack.publish("scale", "nosuch", "1.0", "--workers", "1") == 1
    assert "model 'nosuch' is not served (served: cola, sentiment)" in last_line(capsys)
    assert stack.publish("unregister", "cola", "1.0") == 1
    assert "is the current default" in last_line(capsys)
    assert stack.publish("rollback", "cola") == 1
    assert "no previous default of cola" in last_line(capsys)
    assert stack.publish("shadow", "cola", "1.0", "--percent", "5") == 1
    assert "cola 1.0 is the default; a shadow must be another version" in last_line(capsys)
    assert stack.publish("list") == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split() for line in listing if line.startswith("cola")] == [
        ["cola", "1.0", f"workers={WORKERS}", f"(READY:{WORKERS})", "default", "restarts=0"]
    ]
    assert listing[-1] == f"replica {stack.ts.key_file.parent.name}: serves the state"


def test_a_corrupt_state_is_refused_in_one_line(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """By publish, and by the launcher: nothing is served by guess. The running replica keeps what it serves."""
    (stack.store / STATE_FILE).write_text('{"format": 1, "models": {"cola": {"default": "2.0"}}}')
    assert stack.publish("list") == 1
    error = last_line(capsys)
    assert error.startswith(f"publish: error: {stack.store / STATE_FILE} is not a valid state: cola: versions must")
    assert "nothing is served by guess" in error
    run = subprocess.run([sys.executable, "-m", "stack", "models", "--no-train", "--model-store", str(stack.store)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [f"[stack] error: {error.removeprefix('publish: error: ')}"]
    time.sleep(2)  # two passes of the reconciler
    assert [v["modelVersion"] for v in management_client(stack.ts).versions("cola")] == ["1.0"]
    report = read_report(workers_file_beside(stack.ts.key_file))
    assert report is not None
    assert "the replica keeps serving what it serves" in report.problems[0]


def test_a_store_that_refuses_the_write_changes_nothing(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """The state is the only thing publish writes; when the store refuses it (here: a directory in the way of its
    lock, which fails even for root; in compose: a folder the container's user cannot write), nothing changes."""
    stage_v2(stack)
    assert stack.publish("register", "cola-2.0.mar", "--workers", "1") == 0
    before = state_of(stack.store)
    blocker = stack.store / f".{STATE_FILE}.lock"
    blocker.unlink()
    blocker.mkdir()
    try:
        capsys.readouterr()
        assert stack.publish("set-default", "cola", "2.0", "--force") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"publish: error: cannot lock {stack.store / STATE_FILE} (")
        assert "nothing was changed" in err[-1]
        assert state_of(stack.store) == before
        assert management_client(stack.ts).default_version("cola") == "1.0"
    finally:
        blocker.rmdir()
    assert stack.publish("unregister", "cola", "2.0", "--delete-archive") == 0
    assert not (stack.store / "cola-2.0.mar").exists()


def corrupted(archive: Path, target: Path) -> Path:
    """``archive`` with its ONNX graph replaced by junk: it registers, and every worker fails to load it."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, b"not an onnx graph" if info.filename == "model.onnx" else src.read(info))
    return target


def workers_of(stack: Stack, name: str, version: str) -> list[tuple[str, int, str]]:
    (described,) = [v for v in management_client(stack.ts).versions(name) if v["modelVersion"] == version]
    return sorted((w["id"], w["pid"], w["status"]) for w in described["workers"])


def test_a_register_that_fails_leaves_the_serving_workers_as_they_were(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version whose workers cannot load is dropped (no worker left restarting in a loop, no unpacked copy left in
    TorchServe's TEMP), and the default's workers are the same processes, READY, answering."""
    unpacked = temp_in(stack.run_dir) / "models"
    copies = sorted(unpacked.iterdir())
    before = workers_of(stack, "cola", "1.0")
    corrupted(stack.incoming / "cola-2.0.mar", stack.store / "cola-2.0.mar")
    assert stack.publish("register", "cola-2.0.mar", "--workers", "1") == 1
    error = last_line(capsys)
    assert error.startswith(f"publish: error: cola 2.0 did not start ({stack.ts.key_file.parent.name}: register cola")
    assert f"it was taken out of {STATE_FILE}, and the versions that were serving kept their workers" in error
    assert state_of(stack.store) == START_STATE
    assert sorted(unpacked.iterdir()) == copies
    assert [v["modelVersion"] for v in management_client(stack.ts).versions("cola")] == ["1.0"]
    assert workers_of(stack, "cola", "1.0") == before
    headers = {"Authorization": f"Bearer {stack.ts.keys()['inference']}"}
    answer = httpx.post(f"{stack.ts.inference_url}/predictions/cola", json={"text": "a dog"}, headers=headers)
    assert answer.status_code == 200


@dataclass
class Traffic:
    """Client threads posting to the gateway until stopped: statuses and served versions, per kind of request."""

    base_url: str
    results: dict[str, list[tuple[int, str | None]]] = field(default_factory=lambda: {"default": [], "pinned": []})
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, kind: str) -> None:
        headers = {"X-Model-Version": "1.0"} if kind == "pinned" else {}
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = client.post("/generate", json={"passage": "The dog is happy."}, headers=headers)
                    self.results[kind].append((response.status_code, response.headers.get("X-Model-Version")))
                except httpx.HTTPError as exc:
                    self.results[kind].append((0, type(exc).__name__))

    def wait_for(self, condition: Callable[[], bool], *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "traffic did not reach the expected state"
            time.sleep(0.05)

    def served_since(self, mark: int, version: str) -> bool:
        return any(v == version for _, v in self.results["default"][mark:])


def test_switch_and_rollback_under_traffic_fail_no_request(stack: Stack) -> None:
    with running_gateway(settings_for(stack.ts)) as base_url:
        traffic = Traffic(base_url)
        threads = [threading.Thread(target=traffic.run, args=(kind,)) for kind in ("default", "default", "pinned")]
        for thread in threads:
            thread.start()
        try:
            traffic.wait_for(lambda: len(traffic.results["default"]) >= 5)
            stage_v2(stack)
            assert stack.publish("register", "cola-2.0.mar", "--workers", "1") == 0
            assert stack.publish("set-default", "cola", "2.0", "--force") == 0
            mark = len(traffic.results["default"])
            traffic.wait_for(lambda: traffic.served_since(mark, "2.0"))
            assert stack.publish("rollback", "cola") == 0
            mark = len(traffic.results["default"])
            traffic.wait_for(lambda: traffic.served_since(mark, "1.0") and len(traffic.results["default"]) > mark + 5)
            assert stack.publish("unregister", "cola", "2.0") == 0
            mark = len(traffic.results["default"])
            traffic.wait_for(lambda: len(traffic.results["default"]) > mark + 10)
        finally:
            traffic.stop.set()
            for thread in threads:
                thread.join(timeout=40)

    failures = {kind: Counter(r for r in rows if r[0] != 200) for kind, rows in traffic.results.items()}
    assert failures == {"default": Counter(), "pinned": Counter()}
    assert {v for _, v in traffic.results["pinned"]} == {"1.0"}  # pinned requests never moved
    assert {v for _, v in traffic.results["default"]} == {"1.0", "2.0"}
    assert len(traffic.results["pinned"]) > 10
    assert state_of(stack.store) == START_STATE


def test_restart_serves_the_same_versions_and_default(tmp_path: Path, tiny_store: Path, incoming: Path) -> None:
    """A TorchServe of its own (stopped here); the restart takes new free ports: the store's served.json carries the
    state, not the ports. An archive packaged meanwhile stays inert: not registered, not the default."""
    store = base_store(tmp_path, tiny_store)
    with private_torchserve(store, tmp_path / "run", follow=True) as first:
        own = Stack(store=store, run_dir=tmp_path / "run", incoming=incoming, ts=first)
        stage_v2(own)
        assert own.publish("register", "cola-2.0.mar") == 0
        assert own.publish("set-default", "cola", "2.0", "--force") == 0
        assert own.publish("rollback", "cola") == 0  # the operator's default (1.0) is not the newest
    package(make_tiny_classifier(tmp_path / "cola-v3", COLA_LABELS, seed=9), name="cola", store=store, version="3.0")
    with (
        private_torchserve(store, tmp_path / "run") as ts,
        running_gateway(settings_for(ts, model_store=store)) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as gateway,
    ):
        versions = sorted(v["modelVersion"] for v in management_client(ts).versions("cola"))
        unpinned = gateway.post("/generate", json={"passage": "The dog is happy."})
        pinned = gateway.post("/generate", json={"passage": "The dog is happy."}, headers={"X-Model-Version": "2.0"})
        inert = gateway.post("/generate", json={"passage": "The dog is happy."}, headers={"X-Model-Version": "3.0"})
        catalogue = gateway.get("/models").json()
    assert versions == ["1.0", "2.0"]
    assert (unpinned.status_code, unpinned.headers["X-Model-Version"]) == (200, "1.0")
    assert (pinned.status_code, pinned.headers["X-Model-Version"]) == (200, "2.0")
    assert inert.status_code == 404
    cola = next(m for m in catalogue["models"] if m["name"] == "cola")
    assert (cola["default"], [v["version"] for v in cola["versions"]]) == ("1.0", ["1.0", "2.0"])


def test_an_older_store_gets_a_state_of_its_defaults_only(tmp_path: Path, tiny_store: Path, incoming: Path) -> None:
    """A store from before served.json (archives and the old defaults.json): the launcher writes the state once, with
    the default each model had (defaults.json's choice, else the newest), and says so in one line."""
    store = base_store(tmp_path, tiny_store)
    shutil.copy2(incoming / "cola-2.0.mar", store / "cola-2.0.mar")
    (store / "defaults.json").write_text(json.dumps({"cola": {"default": "1.0", "history": []}}))
    run = subprocess.run([sys.executable, "-m", "stack", "models", "--no-train", "--model-store", str(store)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    said = [line for line in run.stdout.splitlines() if STATE_FILE in line]
    assert said == [f"[stack] {store / STATE_FILE} now records what is served: cola 1.0, sentiment 1.0 (the defaults "
                    "only; 1 other archive(s) stay unregistered until `publish register`)"]  # fmt: skip
    assert state_of(store) == START_STATE
    again = subprocess.run([sys.executable, "-m", "stack", "models", "--no-train", "--model-store", str(store)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert STATE_FILE not in again.stdout  # written once


def test_one_publish_moves_every_replica_and_a_later_one_converges_by_itself(
    tmp_path: Path, tiny_store: Path, incoming: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two TorchServes following one store (as compose's replicas do); publish finds both reports through the
    {ip} wildcard of INFERENCE_KEY_FILE, returns only once both serve the new default, and a third replica started
    afterwards serves the same state from its first request."""
    store = base_store(tmp_path, tiny_store)
    monkeypatch.setenv("INFERENCE_KEY_FILE", str(tmp_path / "{ip}" / "torchserve" / "inference_key.json"))
    with (
        private_torchserve(store, tmp_path / "a", follow=True) as first,
        private_torchserve(store, tmp_path / "b", follow=True) as second,
    ):
        both = Stack(store=store, run_dir=tmp_path / "a", incoming=incoming, ts=first)
        stage_v2(both)
        assert both.publish("register", "cola-2.0.mar") == 0
        assert both.publish("set-default", "cola", "2.0", "--force") == 0
        assert [management_client(ts).default_version("cola") for ts in (first, second)] == ["2.0", "2.0"]
        with private_torchserve(store, tmp_path / "c", follow=True) as third:
            versions = sorted(v["modelVersion"] for v in management_client(third).versions("cola"))
            assert (versions, management_client(third).default_version("cola")) == (["1.0", "2.0"], "2.0")
            assert both.publish("list") == 0
