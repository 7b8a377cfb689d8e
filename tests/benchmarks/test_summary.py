"""The README's benchmark summary is what the recorded figures of the last `make bench` render: never typed."""

from __future__ import annotations

import json

from benchmarks import report
from stack import doc_sections
from torchserve_protocol.layout import REPO

RECORD = REPO / "docs" / "results" / "bench.json"


def test_the_readme_summary_is_the_recorded_run() -> None:
    figures = json.loads(RECORD.read_text())
    cells = [report.Cell(**cell) for cell in figures["cells"]]
    rendered = report.summary(cells, figures["ceilings"], figures["rss"], when=figures["when"])
    assert doc_sections.section((REPO / "README.md").read_text(), "bench:summary") == rendered


def test_the_recorded_run_measured_every_configuration_at_32_clients() -> None:
    cells = json.loads(RECORD.read_text())["cells"]
    measured = {c["config"] for c in cells if c["endpoint"] == "generate" and c["concurrency"] == 32}
    assert measured == set(report.CONFIG_NAMES)
