"""The launcher never silently replaces a user's gateway upstream settings: a different value is refused with one
line before anything starts, the same value is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.__main__ import main
from stack.gateway import Gateway
from stack.torchserve import Ports, TorchServe

PORTS = "18080,18081,18082,17070,17071"  # never bound: the launcher refuses before it starts anything


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_INFERENCE_URL", "http://127.0.0.1:9080"),
        ("GATEWAY_MANAGEMENT_URL", "http://127.0.0.1:9081"),
        ("GATEWAY_KEY_FILE", "/elsewhere/key_file.json"),
    ],
)
@pytest.mark.parametrize("command", ["start", "serve"])
def test_a_different_upstream_setting_is_refused_before_anything_starts(
    name: str,
    value: str,
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(name, value)
    store, run_dir = tmp_path / "store", tmp_path / "run"
    argv = [command, "--model-store", str(store), "--run-dir", str(run_dir), "--ts-ports", PORTS, "--no-train"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"[stack] error: {name}={value} is set, but the launcher starts TorchServe with {name}=")
    assert f"unset {name}" in err[0]
    assert not store.exists()
    assert not run_dir.exists()


def test_the_same_upstream_settings_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ts = TorchServe(model_store=tmp_path / "store", run_dir=tmp_path / "run", ports=Ports(18080, 18081, 18082, 1, 2))
    monkeypatch.setenv("GATEWAY_INFERENCE_URL", "http://127.0.0.1:18080/")  # a trailing slash is the same URL
    monkeypatch.setenv("GATEWAY_MANAGEMENT_URL", "http://127.0.0.1:18081")
    monkeypatch.setenv("GATEWAY_KEY_FILE", str(tmp_path / "run" / "torchserve" / ".." / "torchserve" / "key_file.json"))
    env = Gateway(torchserve=ts).env()
    assert env["GATEWAY_INFERENCE_URL"] == "http://127.0.0.1:18080"
    assert env["GATEWAY_KEY_FILE"] == str(tmp_path / "run" / "torchserve" / "key_file.json")
