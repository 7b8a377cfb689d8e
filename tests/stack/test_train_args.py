"""``TRAIN_ARGS``: flags the launcher appends to each training run of a missing default model (the compose tier
trains on a few rows with it, through the same `models` service a user's first `docker compose up` runs)."""

from __future__ import annotations

import pytest

from stack.__main__ import extra_flags, training_plan
from stack.torchserve import StackError


def test_the_flags_are_split_as_a_shell_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIN_ARGS", "--max-train-rows 64  --output '/tmp/a run'")
    assert extra_flags() == ["--max-train-rows", "64", "--output", "/tmp/a run"]
    assert training_plan(["cola"]).endswith("with TRAIN_ARGS=--max-train-rows 64 --output '/tmp/a run'")


def test_unset_or_empty_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIN_ARGS", "")  # compose passes ${TRAIN_ARGS:-}: set, and empty
    assert extra_flags() == []
    assert "minutes on a 2-core CPU" in training_plan(["cola"])
    monkeypatch.delenv("TRAIN_ARGS")
    assert extra_flags() == []


def test_an_unbalanced_quote_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIN_ARGS", "--output '/tmp/a")
    with pytest.raises(StackError, match=r"^TRAIN_ARGS: No closing quotation$"):
        extra_flags()
