"""The publish CLI against a real TorchServe with the real gateway in front: errors, a zero-downtime switch and
rollback under steady traffic, and a restart that serves the same versions and the same default."""

from __future__ import annotations

import json
import shutil
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
from stack.torchserve import TorchServe
from tests.conftest import free_port, management_client
from tests.gateway.server import private_torchserve, running_gateway, settings_for
from tests.tiny_models import COLA_LABELS, make_tiny_classifier
from torchserve_protocol.layout import temp_in
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
    with private_torchserve(store, root / "run") as ts:
        yield store, ts


@pytest.fixture
def stack(served: tuple[Path, TorchServe], incoming: Path) -> Stack:
    """The shared TorchServe brought back to the same state before every test, whatever ran before (any order):
    cola 1.0 and sentiment 1.0 registered, 1.0 the default, no defaults.json, nothing else in the store."""
    store, ts = served
    management = management_client(ts)
    for version in [v["modelVersion"] for v in management.versions("cola")]:
        if version != "1.0":
            management.set_default("cola", "1.0")
            management.unregister("cola", version)
    for path in store.iterdir():
        if path.name not in BASE:
            if path.is_dir():  # the blocker a test made, should it have been left
                path.rmdir()
            else:
                path.unlink()
    assert [v["modelVersion"] for v in management.versions("cola")] == ["1.0"]
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
    assert "cola has no version '3.0' registered (registered: 1.0)" in last_line(capsys)
    assert stack.publish("scale", "nosuch", "1.0", "--workers", "1") == 1
    assert "model 'nosuch' is not registered" in last_line(capsys)
    assert stack.publish("unregister", "cola", "1.0") == 1
    assert "is the current default" in last_line(capsys)
    assert stack.publish("rollback", "cola") == 1
    assert "no previous default of cola" in last_line(capsys)
    unreachable = f"http://127.0.0.1:{free_port()}"
    argv = ["--management-url", unreachable, "--key-file", str(stack.ts.key_file), "list"]
    assert publish(argv) == 1
    assert "unreachable" in last_line(capsys)
    assert stack.publish("list") == 0
    listing = capsys.readouterr().out
    assert [line.split() for line in listing.splitlines() if line.startswith("cola")] == [
        ["cola", "1.0", "workers=" + ",".join(["READY"] * ServingConfig().min_workers), "default"]
    ]


def test_a_store_that_refuses_the_write_leaves_torchserve_unchanged(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """defaults.json is written before TorchServe is told; when the store refuses it (here: a directory in the way,
    which fails even for root; in compose: a folder the container's user cannot write), nothing changes."""
    stage_v2(stack)
    assert stack.publish("register", "cola-2.0.mar", "--workers", "1") == 0
    blocker = stack.store / "defaults.json"
    blocker.mkdir()
    try:
        capsys.readouterr()
        assert stack.publish("set-default", "cola", "2.0") == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith(f"publish: error: cannot write {blocker} (")
        assert "TorchServe was not changed" in err[0]
        assert management_client(stack.ts).default_version("cola") == "1.0"
    finally:
        blocker.rmdir()
    assert stack.publish("unregister", "cola", "2.0", "--delete-archive", "--drain-s", "0") == 0
    assert not list(stack.store.glob(".defaults-*"))


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
    assert error.startswith("publish: error: cola 2.0 did not start (")
    assert "TorchServe dropped it" in error
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
            assert stack.publish("set-default", "cola", "2.0") == 0
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
    assert json.loads((stack.store / "defaults.json").read_text()) == {"cola": {"default": "1.0", "history": []}}


def test_restart_serves_the_same_versions_and_default(tmp_path: Path, tiny_store: Path, incoming: Path) -> None:
    """A TorchServe of its own (stopped here); the restart takes new free ports: the store and defaults.json carry
    the state, not the ports."""
    store = base_store(tmp_path, tiny_store)
    with private_torchserve(store, tmp_path / "run") as first:
        own = Stack(store=store, run_dir=tmp_path / "run", incoming=incoming, ts=first)
        # The operator's default (1.0, after a rollback) differs from the launcher's fallback (the newest, 2.0).
        stage_v2(own)
        assert own.publish("register", "cola-2.0.mar") == 0
        assert own.publish("set-default", "cola", "2.0") == 0
        assert own.publish("rollback", "cola") == 0
    with (
        private_torchserve(store, tmp_path / "run") as ts,
        running_gateway(settings_for(ts)) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as gateway,
    ):
        versions = sorted(v["modelVersion"] for v in httpx.get(
            f"{ts.management_url}/models/cola/all", headers={"Authorization": f"Bearer {ts.keys()['management']}"}
        ).json())  # fmt: skip
        unpinned = gateway.post("/generate", json={"passage": "The dog is happy."})
        pinned = gateway.post("/generate", json={"passage": "The dog is happy."}, headers={"X-Model-Version": "2.0"})
    assert versions == ["1.0", "2.0"]
    assert (unpinned.status_code, unpinned.headers["X-Model-Version"]) == (200, "1.0")
    assert (pinned.status_code, pinned.headers["X-Model-Version"]) == (200, "2.0")
