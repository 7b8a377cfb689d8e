"""A student goes live the way every version does: the really trained tiny teacher (cola 1.0, the served default) and
its student (cola 2.0, from ``--student-of`` alone) on a real TorchServe behind the real gateway; the publish CLI
registers the student, gates it (no --force: its recorded and served quality pass), shadows, canaries and promotes
it, and /generate answers from it with its contract unchanged."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from stack.publish import main as publish
from tests.gateway.conftest import sample
from tests.gateway.server import private_torchserve, running_gateway, settings_for
from tests.integration.test_canary import PASSAGE, post_many, until_only, until_split_seen
from tests.students import Taught
from torchserve_protocol.store import STATE_FILE, read_state

pytestmark = pytest.mark.integration

SPLIT_CHECK_S = 0.2


def shadow_copies(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    return sample(text, "gateway_shadow_copies_total", model="cola", version="1.0", shadow="2.0") or 0.0


def test_a_student_is_registered_gated_shadowed_canaried_and_promoted_and_answers_generate(
    taught: Taught, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("cola-1.0.mar", "cola-2.0.mar", STATE_FILE):  # the teacher served, its student inert
        shutil.copy2(taught.store / name, store / name)
    with private_torchserve(store, tmp_path / "run", follow=True) as ts:

        def cli(*argv: str) -> int:
            common = ["--management-url", ts.management_url, "--inference-url", ts.inference_url]
            common += ["--key-file", str(ts.key_file), "--model-store", str(store), "--data-dir", str(taught.data_dir)]
            return publish([*common, "--timeout", "120", *argv])

        settings = settings_for(ts, model_store=store, split_check_s=SPLIT_CHECK_S)
        with running_gateway(settings) as gateway:
            assert set(post_many(gateway, 4)) == {"1.0"}
            assert cli("register", "cola-2.0.mar", "--workers", "1") == 0
            pinned = httpx.post(f"{gateway}/generate", json=PASSAGE, headers={"X-Model-Version": "2.0"}, timeout=30)
            assert (pinned.status_code, pinned.headers["X-Model-Version"]) == (200, "2.0")

            assert cli("shadow", "cola", "2.0", "--percent", "100") == 0
            deadline = time.monotonic() + 30
            while shadow_copies(gateway) == 0:  # the gateway re-reads the shadow within SPLIT_CHECK_S
                assert set(post_many(gateway, 4, workers=1)) == {"1.0"}  # the default still answers every client
                assert time.monotonic() < deadline, "no copy reached the student"
            assert cli("shadow", "cola", "--off") == 0

            capsys.readouterr()
            assert cli("canary", "cola", "2.0", "--percent", "50") == 0  # gated, not forced
            (gate,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("gate:")]
            assert gate.startswith("gate: cola 2.0 mcc recorded "), gate
            until_split_seen(gateway, "2.0")
            assert cli("promote", "cola") == 0  # gated again
            until_only(gateway, "2.0")

            answer = httpx.post(f"{gateway}/generate", json=PASSAGE, timeout=30)
            assert answer.status_code == 200
            assert answer.headers["X-Model-Version"] == "2.0"
            body = answer.json()
            assert set(body) == {"prob"}  # the contract /generate always had
            assert 0 <= body["prob"] <= 1

    state = read_state(store)
    assert state is not None
    cola = state.models["cola"]
    assert (cola.default, cola.history, cola.canary, cola.shadow) == ("2.0", ("1.0",), None, None)
    quality = cola.versions["2.0"].quality
    student = json.loads((taught.student_run / "metrics.json").read_text())
    assert quality is not None
    assert quality.recorded == student["quantization"]["chosen"]["validation"]["mcc"]
    assert abs(quality.served - quality.recorded) <= 0.005  # the gate measured it through TorchServe
