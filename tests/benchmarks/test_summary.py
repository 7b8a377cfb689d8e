"""The README's benchmark summary and docs/benchmarks.md are what the recorded figures of the last `make bench`
render: never typed."""

from __future__ import annotations

import json
import re

from benchmarks import report
from benchmarks.run import METHOD, build_parser
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


def test_the_targets_show_the_p99_floor_a_closed_loop_sets_and_the_gateways_cpu_per_request() -> None:
    cell = report.Cell(
        config="gateway", endpoint="generate", concurrency=32, rps=128.0, texts_per_s=128.0,
        p50_ms=240.0, p90_ms=300.0, p99_ms=140.0, errors=0, requests=3 * 1280,
        cpu_s={"gateway": 0.64, "ts-workers": 19.0}, client_cpu_s=0.1, repeats=3,
    )  # fmt: skip
    rows = report.targets([cell], {"cola": 130.0})
    assert (
        "| p99 at 32 clients < 150 ms (/generate) | 140 ms (the mean alone is 32 clients / 128 req/s = 250 ms) | met |"
        in rows
    )
    assert (
        "| CPU per request of the gateway and the edge (/generate, 32 clients) | gateway 0.50 ms | reported |" in rows
    )
    with_edge = report.Cell(**{**cell.__dict__, "cpu_s": {"edge": 0.128, "gateway": 0.77}})
    assert (
        "| CPU per request of the gateway and the edge (/generate, 32 clients) | gateway 0.60 ms, edge 0.10 ms "
        "| reported |" in report.targets([with_edge], {})
    )


def test_benchmarks_md_holds_the_recorded_run() -> None:
    """One run wrote docs/benchmarks.md and the record: its tables, targets, ceilings and memory are the record's."""
    figures = json.loads(RECORD.read_text())
    cells = [report.Cell(**cell) for cell in figures["cells"]]
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    assert "\n".join(report.tables(cells)) in doc
    assert "\n".join(report.targets(cells, figures["ceilings"])) in doc
    assert all(f"`{model}` {v:.1f} texts/s" in doc for model, v in figures["ceilings"].items())
    assert all(f"{report.CONFIG_NAMES[config]} {v:.0f}" in doc for config, v in figures["rss"].items())


def test_the_options_benchmarks_md_lists_are_the_harness_s() -> None:
    flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    listed = set(re.findall(r"`(--[a-z-]+)", METHOD.split("Options:", 1)[1]))
    assert listed, "the scan finds no option"
    assert listed <= flags
