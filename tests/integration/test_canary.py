"""Canary rollouts through the real stack: a TorchServe holding cola 1.0 (the default) and 2.0 (other weights), the
real gateway reading the split from the store's served.json, and the publish CLI writing it."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stack.publish import main as publish
from stack.torchserve import TorchServe
from tests.gateway.conftest import sample
from tests.gateway.server import private_torchserve, running_gateway, settings_for
from tests.tiny_models import COLA_LABELS, make_tiny_classifier
from torchserve_protocol.layout import REPO
from torchserve_protocol.store import STATE_FILE, parse_state, read_state, write_state
from training.package import ServingConfig, package

pytestmark = pytest.mark.integration

PASSAGE = {"passage": "The dog is happy."}
SPLIT_CHECK_S = 0.2
DASHBOARD = REPO / "deploy" / "grafana" / "canary-dashboard.json"
V2_METRICS = {"best_validation": {"mcc": 0.25, "accuracy": 0.7}}


@dataclass
class Stack:
    store: Path
    ts: TorchServe

    def publish(self, *argv: str) -> int:
        common = ["--management-url", self.ts.management_url, "--key-file", str(self.ts.key_file)]
        return publish([*common, "--model-store", str(self.store), "--timeout", "120", *argv])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("canary")
    store = root / "store"
    store.mkdir()
    for archive in ("cola-1.0.mar", "sentiment-1.0.mar"):
        shutil.copy2(tiny_store / archive, store / archive)
    v2 = make_tiny_classifier(root / "cola-v2", COLA_LABELS, seed=7)
    (v2 / "metrics.json").write_text(json.dumps(V2_METRICS))  # the validation metric GET /models reports
    package(v2, name="cola", store=store, version="2.0")
    workers = {"workers": ServingConfig().min_workers}
    write_state(store, parse_state({"format": 1, "models": {
        "cola": {"default": "1.0", "versions": {"1.0": workers, "2.0": workers}},
        "sentiment": {"default": "1.0", "versions": {"1.0": workers}},
    }}))  # fmt: skip
    with private_torchserve(store, root / "run", follow=True) as ts:
        yield Stack(store=store, ts=ts)


@pytest.fixture
def gateway(stack: Stack) -> Iterator[str]:
    with running_gateway(settings_for(stack.ts, model_store=stack.store, split_check_s=SPLIT_CHECK_S)) as url:
        yield url


@pytest.fixture(autouse=True)
def no_canary_after(stack: Stack) -> Iterator[None]:
    yield
    state = read_state(stack.store)
    assert state is not None
    write_state(stack.store, state.with_model("cola", state.models["cola"].with_changes(canary=None)))


def cola_of(store: Path) -> dict[str, object]:
    return dict(json.loads((store / STATE_FILE).read_text())["models"]["cola"])


def errors_of(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def post_many(base_url: str, n: int, *, headers: dict[str, str] | None = None, workers: int = 8) -> list[str | None]:
    """``n`` requests from ``workers`` threads; the served version of each (every one must answer 200)."""

    def one(client: httpx.Client) -> str | None:
        response = client.post("/generate", json=PASSAGE, headers=headers or {})
        assert response.status_code == 200, response.text
        return response.headers.get("X-Model-Version")

    with httpx.Client(base_url=base_url, timeout=30) as client, ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: one(client), range(n)))


def until_split_seen(base_url: str, version: str) -> None:
    """Poll (bounded) until an unpinned request is served by ``version``: the gateway re-read the split file."""
    for _ in range(200):
        if version in post_many(base_url, 10, workers=1):
            return
    raise AssertionError(f"no unpinned request served by {version}")


def until_only(base_url: str, version: str) -> list[str | None]:
    """Poll (bounded) until 20 unpinned requests in a row are all served by ``version``; those 20 versions."""
    for _ in range(100):
        served = post_many(base_url, 20, workers=2)
        if set(served) == {version}:
            return served
    raise AssertionError(f"unpinned requests never all went to {version}")


def metric(text: str, name: str, **labels: str) -> float:
    return sample(text, name, **labels) or 0.0


def test_the_cli_refuses_bad_canaries_with_one_line(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert stack.publish("canary", "cola", "3.0", "--percent", "10") == 1
    assert errors_of(capsys) == [
        "publish: error: cola has no version '3.0' registered (registered: 1.0, 2.0; `register cola-3.0.mar` adds it)"
    ]
    for percent in ("150", "-1", "nan"):
        assert stack.publish("canary", "cola", "2.0", "--percent", percent) == 1
        (line,) = errors_of(capsys)
        assert line.startswith("publish: error: --percent must be from 0 to 100")
    assert stack.publish("canary", "cola", "1.0", "--percent", "10") == 1
    assert errors_of(capsys) == ["publish: error: cola 1.0 is already the default; a canary must be another version"]
    assert stack.publish("promote", "cola") == 1
    assert errors_of(capsys) == ["publish: error: cola has no canary running (see `list`)"]
    assert stack.publish("canary", "cola", "2.0", "--percent", "10", "--force") == 0
    assert errors_of(capsys) == [  # the tiny archives have no training record
        "gate: skipped (--force): cola 2.0: the archive's metrics.json records no validation metric, so its quality "
        "is unknown (--force skips the gate)"
    ]
    assert stack.publish("canary", "cola", "2.0", "--percent", "20") == 1
    assert errors_of(capsys) == ["publish: error: cola already has a canary (2.0 at 10%); promote or abort it first"]
    assert stack.publish("list") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("cola")]
    assert [row[:2] + row[4:6] for row in rows] == [["cola", "1.0", "default", "90%"], ["cola", "2.0", "canary", "10%"]]


def test_a_10_percent_canary_serves_10_percent_and_pinned_requests_never_move(stack: Stack, gateway: str) -> None:
    assert stack.publish("canary", "cola", "2.0", "--percent", "10", "--force") == 0
    until_split_seen(gateway, "2.0")
    before = httpx.get(f"{gateway}/metrics").text
    unpinned = Counter(post_many(gateway, 1_200))
    pinned = {v: Counter(post_many(gateway, 60, headers={"X-Model-Version": v})) for v in ("1.0", "2.0")}
    after = httpx.get(f"{gateway}/metrics").text

    assert set(unpinned) == {"1.0", "2.0"}
    assert 0.07 <= unpinned["2.0"] / 1_200 <= 0.13, unpinned
    assert pinned == {"1.0": Counter({"1.0": 60}), "2.0": Counter({"2.0": 60})}
    canary = metric(after, "gateway_model_requests_total", model="cola", version="2.0", role="canary")
    canary -= metric(before, "gateway_model_requests_total", model="cola", version="2.0", role="canary")
    default = metric(after, "gateway_model_requests_total", model="cola", version="1.0", role="default")
    default -= metric(before, "gateway_model_requests_total", model="cola", version="1.0", role="default")
    assert (canary, default) == (unpinned["2.0"], unpinned["1.0"])
    assert metric(after, "gateway_model_requests_total", model="cola", version="2.0", role="pinned") == 60
    for version in ("1.0", "2.0"):
        labelled = sum(metric(after, "gateway_model_predictions_total", model="cola", version=version, label=label)
                       for label in COLA_LABELS)  # fmt: skip
        counted = metric(after, "gateway_model_confidence_count", model="cola", version=version)
        assert labelled == counted > 0


def test_a_client_key_keeps_one_client_on_one_version(stack: Stack, gateway: str) -> None:
    assert stack.publish("canary", "cola", "2.0", "--percent", "50", "--force") == 0
    until_split_seen(gateway, "2.0")
    served = {key: set(post_many(gateway, 8, headers={"X-Client-Key": key})) for key in ("a", "b", "c", "d", "e")}
    assert all(len(versions) == 1 for versions in served.values()), served
    assert {v for versions in served.values() for v in versions} == {"1.0", "2.0"}  # the keys are spread


@pytest.mark.parametrize("action", ["promote", "abort"])
def test_promote_and_abort_fail_no_request(stack: Stack, gateway: str, action: str) -> None:
    assert stack.publish("canary", "cola", "2.0", "--percent", "30", "--force") == 0
    until_split_seen(gateway, "2.0")
    results: list[tuple[int, str | None]] = []  # status, served version of every request sent during the switch
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=gateway, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post("/generate", json=PASSAGE)
                    results.append((response.status_code, response.headers.get("X-Model-Version")))
                except httpx.HTTPError as exc:
                    results.append((0, type(exc).__name__))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while {v for _, v in list(results)} != {"1.0", "2.0"}:  # the traffic is split before the action
            assert time.monotonic() < deadline, "the traffic never reached both versions"
            time.sleep(0.05)
        assert stack.publish(action, "cola", *(["--force"] if action == "promote" else [])) == 0
        after = until_only(gateway, "2.0" if action == "promote" else "1.0")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert len(after) == 20
    assert len(results) > 20
    assert [r for r in results if r[0] != 200] == []  # no request failed
    assert {v for _, v in results} == {"1.0", "2.0"}
    if action == "promote":
        assert (cola_of(stack.store)["default"], cola_of(stack.store)["history"]) == ("2.0", ["1.0"])
        assert stack.publish("rollback", "cola") == 0  # back to 1.0 for the other tests
    assert "canary" not in cola_of(stack.store)


def test_the_split_survives_a_gateway_restart(stack: Stack) -> None:
    assert stack.publish("canary", "cola", "2.0", "--percent", "10", "--force") == 0
    settings = settings_for(stack.ts, model_store=stack.store, split_check_s=SPLIT_CHECK_S)
    for _ in range(2):  # two gateway processes' lifetimes, one after the other, read the same file
        with running_gateway(settings) as base_url:
            served = Counter(post_many(base_url, 100, workers=4))
        assert served == Counter({"1.0": 90, "2.0": 10})  # the interleave is exact per gateway process


def test_models_catalogue_names_versions_split_labels_and_metric(stack: Stack, gateway: str) -> None:
    assert stack.publish("canary", "cola", "2.0", "--percent", "10", "--force") == 0
    body = httpx.get(f"{gateway}/models").json()
    cola = next(m for m in body["models"] if m["name"] == "cola")
    assert cola == {
        "name": "cola", "default": "1.0", "canary": "2.0", "canary_percent": 10.0,
        "shadow": None, "shadow_percent": 0.0,
        "versions": [
            {"version": "1.0", "labels": list(COLA_LABELS), "validation": None},
            {"version": "2.0", "labels": list(COLA_LABELS), "validation": V2_METRICS["best_validation"]},
        ],
    }  # fmt: skip
    assert "key" not in json.dumps(body).lower()


def test_the_dashboard_queries_only_metrics_the_gateway_exports(gateway: str) -> None:
    post_many(gateway, 4)
    missing = httpx.post(f"{gateway}/generate", json=PASSAGE, headers={"X-Model-Version": "9.9"})
    assert missing.status_code == 404  # an error, so that gateway_model_errors_total has a sample
    exported = set(re.findall(r"^(gateway_[a-z_]+)", httpx.get(f"{gateway}/metrics").text, re.MULTILINE))
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if "shadow" not in p["title"].lower()]  # test_shadow.py: with a shadow
    queries = [t["expr"] for panel in panels for t in panel.get("targets", [])]
    queried = {name for expr in queries for name in re.findall(r"\b(gateway_[a-z_]+)", expr)}
    assert queried <= exported, queried - exported
    assert {"gateway_model_requests_total", "gateway_model_confidence_bucket"} <= queried
