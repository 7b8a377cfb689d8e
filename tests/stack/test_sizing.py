"""The limits of docker-compose.yml and deploy/ against the default models' measured footprint (the real-size tier's
record, docs/results/sizing.json), and docs/deployment.md's sizing table as its rendering."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from stack import sizing

MiB = 1 << 20


def test_every_limit_holds_the_measured_footprint_and_the_table_is_current() -> None:
    assert sizing.drift(sizing.load()) == [], "re-measure (`make test-real-size RECORD=1`) or raise the limit"


def test_a_footprint_that_outgrows_a_limit_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    record = copy.deepcopy(sizing.load())
    limit = sizing.limits()["torchserve mem_limit"]
    step = next(iter(record["compose"]))
    record["compose"][step]["torchserve1_peak"] = int(limit * sizing.FIT) + 1
    (problem,) = sizing.problems(record)
    assert problem.startswith(f"torchserve mem_limit {limit / MiB:,.0f} MiB: measured")
    assert f"({step}) is over 90% of it" in problem


def test_sizes_read_as_compose_and_kubernetes_write_them(tmp_path: Path) -> None:
    assert sizing.to_bytes("4g") == 4 << 30
    assert sizing.to_bytes("512m") == 512 << 20
    assert sizing.to_bytes("3Gi") == 3 << 30
    assert sizing.to_bytes("256Mi") == 256 << 20
    assert sizing.to_bytes("1.5g") == 3 << 29
    assert sizing.to_bytes(1024) == 1024
