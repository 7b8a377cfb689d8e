"""Where a run directory keeps TorchServe's key file, with ``{ip}`` and the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchserve_protocol.layout import REPO, default_key_file, default_model_store, key_file_in, run_dir_of


def test_the_repository_root_holds_the_packages() -> None:
    assert (REPO / "torchserve_protocol" / "layout.py").is_file()
    assert (REPO / "config.properties").is_file()


def test_ip_is_replaced_only_where_it_is_written() -> None:
    assert run_dir_of("/run/ts/{ip}", address=lambda: "10.0.0.7") == Path("/run/ts/10.0.0.7")

    def never() -> str:
        raise AssertionError("no placeholder: the address is not asked")

    assert run_dir_of("/run/ts", address=never) == Path("/run/ts")


def test_the_key_file_of_a_run_directory(tmp_path: Path) -> None:
    assert key_file_in(tmp_path) == tmp_path / "torchserve" / "key_file.json"


def test_defaults_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KEY_FILE", raising=False)
    monkeypatch.delenv("MODEL_STORE", raising=False)
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "{ip}"))
    assert default_key_file().parent.parent.parent == tmp_path
    assert default_model_store() == REPO / "model_store"

    monkeypatch.setenv("KEY_FILE", str(tmp_path / "elsewhere.json"))
    monkeypatch.setenv("MODEL_STORE", str(tmp_path / "store"))
    assert default_key_file() == tmp_path / "elsewhere.json"
    assert default_model_store() == tmp_path / "store"
