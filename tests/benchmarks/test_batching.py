"""`python -m benchmarks.batching`: docs/performance.md's batching section is what the recorded run renders, and the
benchmark itself, on a tiny archive cut to two cells of one second, registers each cell with its own batch size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks import batching, batching_report
from stack import doc_sections
from torchserve_protocol.layout import REPO


def test_the_performance_doc_shows_the_recorded_batching_run() -> None:
    doc = (REPO / "docs" / "performance.md").read_text()
    rendered = batching_report.render(batching_report.load())
    assert doc_sections.section(doc, batching_report.SECTION) == rendered, "run `make bench-batching` again"


def run(connections: int, rps: float, p99_ms: float) -> dict[str, Any]:
    return {"connections": connections, "rps": rps, "p50_ms": 10.0, "p99_ms": p99_ms, "errors": 0, "requests": 100,
            "cpu_ms_per_request": 2.0}  # fmt: skip


def test_a_row_shows_the_medians_of_its_repeats_and_the_archives_own_setting_is_marked() -> None:
    cell = {"served": {"workers": 2}, "max_batch_delay_ms": 2}
    record = {
        "started": "2026-12-01 10:00 UTC", "minutes": 1.0, "command": "python -m benchmarks.batching",
        "machine": {"cpu": "a CPU", "cores": 2, "isa": "avx2"}, "loadavg_before": "0.01 0.02 0.03", "busy": [],
        "archive": "cola-1.0.mar", "model": "cola", "version": "1.0", "base_model": "mpnet", "architecture": "mpnet",
        "archive_setting": {"batch_size": 8, "max_batch_delay_ms": 2, "workers": 2}, "texts": "cola", "seconds": 8.0,
        "warmup": 2.0, "repeats": 3, "connections": [32],
        "cells": [
            {**cell, "batch_size": 4, "runs": [run(32, 100, 300), run(32, 120, 200), run(32, 90, 250)]},
            {**cell, "batch_size": 8, "runs": [run(32, 130, 210), run(32, 140, 190), run(32, 135, 500)]},
        ],
    }  # fmt: skip
    rows = [line for line in batching_report.render(record).splitlines() if line.startswith("| ")]
    assert rows[1:] == [
        "| 4, 2 ms | 100.0 | 10.0 / 250.0 | 2.00 | 0 / 300 |",
        "| **8, 2 ms** (the archive's) | 135.0 | 10.0 / 210.0 | 2.00 | 0 / 300 |",
    ]


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("wrk") is None, reason="no wrk (apt-get install -y wrk; `make bench` installs it)")
def test_each_cell_is_served_with_its_batch_size_and_measured(tiny_store: Path, data_dir: Path, tmp_path: Path) -> None:
    record, doc = tmp_path / "batching.json", tmp_path / "performance.md"
    doc.write_text("# Performance\n\n<!-- batching:begin -->\nthe last run\n<!-- batching:end -->\n\nkept\n")
    argv = ["--archive", str(tiny_store / "cola-1.0.mar"), "--data-dir", str(data_dir), "--batch-sizes", "1,4",
            "--delays", "3", "--connections", "1,2", "--seconds", "1", "--warmup", "0",
            "--record", str(record), "--doc", str(doc)]  # fmt: skip

    assert batching.main(argv) == 0

    figures = json.loads(record.read_text())
    own = figures["archive_setting"]
    assert (own["batch_size"], own["max_batch_delay_ms"]) == (8, 2)  # the archive's yaml says otherwise than the cells
    assert [(cell["batch_size"], cell["max_batch_delay_ms"]) for cell in figures["cells"]] == [(1, 3), (4, 3)]
    for cell in figures["cells"]:
        # describe-model's answer while the cell was registered: the register parameters won over the yaml
        assert cell["served"] == {"batch_size": cell["batch_size"], "max_batch_delay_ms": 3, "workers": own["workers"]}
        assert [run["connections"] for run in cell["runs"]] == [1, 2]
        for run in cell["runs"]:
            assert run["errors"] == 0
            assert run["requests"] > 0
            assert run["rps"] > 0
            assert run["cpu_ms_per_request"] > 0
    assert (figures["model"], figures["version"]) == ("cola", "1.0")
    assert doc.read_text() == (
        f"# Performance\n\n<!-- batching:begin -->\n{batching_report.render(figures)}<!-- batching:end -->\n\nkept\n"
    )
