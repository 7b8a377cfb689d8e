"""Shadow traffic through the real stack: a TorchServe holding cola 1.0 (the default) and 2.0 (other weights: they
disagree on some texts), the real gateway reading the shadow from the store's served.json."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stack.torchserve import TorchServe
from tests.gateway.conftest import sample
from tests.gateway.server import private_torchserve, running_gateway, settings_for
from tests.tiny_models import COLA_LABELS, make_tiny_classifier
from torchserve_protocol.layout import REPO
from torchserve_protocol.store import ModelState, Share, State, VersionState, write_state
from training.package import package

pytestmark = pytest.mark.integration

DASHBOARD = REPO / "deploy" / "grafana" / "canary-dashboard.json"
PAIR = {"model": "cola", "version": "1.0", "shadow": "2.0"}
# Random word strings the two tiny models answer differently on some of (checked: the test needs both kinds)
TEXTS = [
    "i love this app", "the boy is happy", "they were not good", "she crashes the update", "we hate that book",
    "please fix this review", "my friend is very great", "the cat and the dog", "it works so bad", "giving up",
    "one more day", "you are terrible but great", "an app for their time", "this is not a review", "i was a girl",
    "very very bad", "the book was good and great", "use it on your time", "they hate it so", "fix the update",
]  # fmt: skip
DELTA_BOUNDS = ("0.001", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.3", "0.5", "1.0", "+Inf")


@dataclass
class Stack:
    store: Path
    ts: TorchServe
    root: Path

    def gateway_store(self, name: str, shadow: Share | None) -> Path:
        """A directory holding only a served.json (cola 1.0 default, 2.0 registered, ``shadow``): what a gateway
        reads of the store. The gateways of one test can so see different states of the same TorchServe."""
        path = self.root / name
        path.mkdir(exist_ok=True)
        write_state(path, state(shadow))
        return path


def state(shadow: Share | None, *, registered: tuple[str, ...] = ("1.0", "2.0", "3.0")) -> State:
    """cola 1.0 the default with ``shadow``; 3.0 is in the state, but TorchServe has no such archive."""
    versions = {v: VersionState(workers=1) for v in registered}
    cola = ModelState(default="1.0", versions=versions, shadow=shadow)
    sentiment = ModelState(default="1.0", versions={"1.0": VersionState(workers=1)})
    return State(models={"cola": cola, "sentiment": sentiment})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("shadow")
    store = root / "store"
    store.mkdir()
    for archive in ("cola-1.0.mar", "sentiment-1.0.mar"):
        shutil.copy2(tiny_store / archive, store / archive)
    package(make_tiny_classifier(root / "cola-v2", COLA_LABELS, seed=7), name="cola", store=store, version="2.0")
    write_state(store, state(None, registered=("1.0", "2.0")))
    with private_torchserve(store, root / "run") as ts:
        yield Stack(store=store, ts=ts, root=root)


def pinned_answers(ts: TorchServe, version: str) -> list[dict[str, object]]:
    """TorchServe's own answers of ``version`` (pinned) for :data:`TEXTS`, one request each."""
    headers = {"Authorization": f"Bearer {ts.keys()['inference']}"}
    with httpx.Client(base_url=ts.inference_url, headers=headers, timeout=30) as client:
        answers = [client.post(f"/predictions/cola/{version}", json={"text": t}) for t in TEXTS]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    return [a.json() for a in answers]


def settled(base_url: str, copies: int, *, shadow: str = "2.0", timeout: float = 30.0) -> str:
    """The gateway's metrics once it has sent ``copies`` copies to ``shadow`` and none is in flight (polled)."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(f"{base_url}/metrics").text
        sent = sample(text, "gateway_shadow_copies_total", **{**PAIR, "shadow": shadow}) or 0
        if sent >= copies and sample(text, "gateway_shadow_in_flight") == 0:
            return text
        assert time.monotonic() < deadline, f"{sent} of {copies} copies sent; in flight:\n{text}"
        time.sleep(0.05)


def post_all(base_url: str, path: str = "/generate") -> list[httpx.Response]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        return [client.post(path, json={"passage": t}) for t in TEXTS]


def test_agreement_metrics_are_exact(stack: Stack) -> None:
    default, shadow = pinned_answers(stack.ts, "1.0"), pinned_answers(stack.ts, "2.0")
    agreed = sum(d["label"] == s["label"] for d, s in zip(default, shadow, strict=True))
    assert 0 < agreed < len(TEXTS), "the two tiny models must agree on some texts and disagree on others"
    deltas = [
        abs(s["probabilities"][d["label"]] - d["probabilities"][d["label"]])  # type: ignore[index]
        for d, s in zip(default, shadow, strict=True)
    ]
    settings = settings_for(stack.ts, model_store=stack.gateway_store("on", Share("2.0", 100.0)))
    with running_gateway(settings) as base_url:
        assert [r.status_code for r in post_all(base_url)] == [200] * len(TEXTS)
        text = settled(base_url, len(TEXTS))
    assert sample(text, "gateway_shadow_copies_total", **PAIR) == len(TEXTS)
    assert sample(text, "gateway_shadow_compared_total", **PAIR) == len(TEXTS)
    assert sample(text, "gateway_shadow_agreed_total", **PAIR) == agreed
    for bound in DELTA_BOUNDS:
        expected = sum(delta <= float(bound) for delta in deltas)
        assert sample(text, "gateway_shadow_delta_p_bucket", **PAIR, le=bound) == expected, bound
    assert sample(text, "gateway_shadow_delta_p_sum", **PAIR) == pytest.approx(sum(deltas), abs=1e-9)


def test_a_100_percent_shadow_changes_no_answer(stack: Stack) -> None:
    bodies = [("/generate", {"passage": t}) for t in TEXTS[:8]]
    bodies += [("/generate/batch", {"passages": TEXTS[8:14]}), ("/predict", {"text": TEXTS[0]}),
               ("/generate", {"passage": ""}), ("/generate", {"passage": "x" * 6000})]  # fmt: skip
    seen = {}
    for name, shadow in (("off", None), ("on", Share("2.0", 100.0))):
        settings = settings_for(stack.ts, model_store=stack.gateway_store(name, shadow))
        with running_gateway(settings) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
            seen[name] = [(r.status_code, r.content) for r in (client.post(p, json=b) for p, b in bodies)]
            if shadow is not None:  # the valid cola requests are copied
                assert sample(settled(base_url, 9), "gateway_shadow_copies_total", **PAIR) == 8 + 1
    assert seen["on"] == seen["off"]
    assert {status for status, _ in seen["on"]} == {200, 422}


@pytest.mark.parametrize(
    ("shadow", "overrides", "reason"),
    [(Share("3.0", 100.0), {}, "error"), (Share("2.0", 100.0), {"shadow_timeout_s": 0.001}, "timeout")],
    ids=["unregistered", "slow"],
)
def test_a_down_or_slow_shadow_costs_clients_nothing(
    stack: Stack, shadow: Share, overrides: dict[str, object], reason: str
) -> None:
    settings = settings_for(stack.ts, model_store=stack.gateway_store(f"bad-{reason}", shadow), **overrides)
    with running_gateway(settings) as base_url:
        assert [r.status_code for r in post_all(base_url)] == [200] * len(TEXTS)
        text = settled(base_url, len(TEXTS), shadow=shadow.version)
    pair = {**PAIR, "shadow": shadow.version}
    assert sample(text, "gateway_shadow_dropped_total", **pair, reason=reason) == len(TEXTS)
    assert sample(text, "gateway_shadow_copies_total", **pair) == len(TEXTS)
    assert sample(text, "gateway_shadow_compared_total", **pair) == 0
    assert "gateway_model_errors_total{" not in text


def test_the_shadow_survives_a_gateway_restart(stack: Stack) -> None:
    settings = settings_for(stack.ts, model_store=stack.gateway_store("restart", Share("2.0", 50.0)))
    for _ in range(2):  # two gateway processes' lifetimes, one after the other, read the same file at start
        with running_gateway(settings) as base_url:
            post_all(base_url)
            text = settled(base_url, len(TEXTS) // 2)
        assert sample(text, "gateway_shadow_copies_total", **PAIR) == len(TEXTS) // 2


def test_the_dashboards_shadow_panels_query_only_exported_metrics(stack: Stack) -> None:
    settings = settings_for(stack.ts, model_store=stack.gateway_store("on", Share("2.0", 100.0)))
    with running_gateway(settings) as base_url:
        post_all(base_url)
        settled(base_url, len(TEXTS))
        exported = set(re.findall(r"^(gateway_[a-z_]+)", httpx.get(f"{base_url}/metrics").text, re.MULTILINE))
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if "shadow" in p["title"].lower()]
    queried = {name for p in panels for t in p.get("targets", []) for name in re.findall(r"\b(gateway_[a-z_]+)",
                                                                                         t["expr"])}  # fmt: skip
    assert {"gateway_shadow_copies_total", "gateway_shadow_dropped_total", "gateway_shadow_agreed_total",
            "gateway_shadow_delta_p_bucket"} <= queried  # fmt: skip
    assert queried <= exported, queried - exported
