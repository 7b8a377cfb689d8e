"""docs/performance.md and docs/training.md are records of dated measurements: every table of measurements typed
by hand says what produced it (a command of this repository, the commit, the date, the machine), every throughput or
speed-up in their prose is dated, and they do not restate the figures of the last `make bench`
(docs/results/bench.json: they live in the README and benchmarks.md). Generated sections are not typed by hand:
their record and the check that renders them are their provenance."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docs.markdown import name, prose
from torchserve_protocol.layout import REPO

PERFORMANCE = REPO / "docs" / "performance.md"
TRAINING = REPO / "docs" / "training.md"
RECORDS = [PERFORMANCE, TRAINING]
SOURCE = re.compile(  # Source: <commands>; commit <sha> (<date>)...; <the machine's state>
    r"^Source: (?P<commands>.+?); commit (?P<commit>[0-9a-f]{7,40})\b.*?\((?P<date>\d{4}-\d\d-\d\d)\)"
    r".*?; (?P<machine>.+)$"
)
COMMAND = re.compile(r"`((?:python -m|make) [^`]+)`")
COMMIT = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b(?!\.\.\.)")  # `53aa5117...`: a hash cut short, not a commit
FIGURE = re.compile(r"\d[\d,.]*\s*(?:requests/s|req/s|texts/s)|\b\d+(?:\.\d+)?x\b")
MEASURED = re.compile(rf"{FIGURE.pattern}|\b\d[\d,.]*\s*(?:ms|s|min|minutes)\b")  # a rate, multiple or duration
HEADING = re.compile(r"^#+ ", flags=re.M)
GENERATED = re.compile(r"^<!-- ([\w:-]+):begin -->$.*?^<!-- \1:end -->$", flags=re.M | re.S)


def tables(doc: Path) -> list[tuple[str, str, str]]:
    """(the line above each table typed by hand, the table's header line, the whole table)."""
    lines = [line for line in GENERATED.sub("", prose(doc)).splitlines() if line.strip()]
    found = []
    for i, line in enumerate(lines):
        if line.startswith("|") and not lines[i - 1].startswith("|") and i + 1 < len(lines):
            end = next((j for j, row in enumerate(lines[i:]) if not row.startswith("|")), len(lines) - i)
            found.append((lines[i - 1], line, "\n".join(lines[i : i + end])))
    return found


def records(doc: Path) -> list[tuple[str, str]]:
    """(line above, header) of each table that must name its source: performance.md's every table; elsewhere the
    tables that hold a measurement (a duration, a rate or a multiple)."""
    return [(above, header) for above, header, table in tables(doc) if doc == PERFORMANCE or MEASURED.search(table)]


def runnable(command: str) -> bool:
    words = command.split()
    if words[0] == "make":
        targets = re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.M)
        return words[1] in targets
    module = words[2]
    if not module.startswith("benchmarks."):
        return importlib.util.find_spec(module) is not None
    return hasattr(importlib.import_module(module), "main")


@pytest.mark.parametrize("doc", RECORDS, ids=name)
def test_every_table_says_what_produced_it(doc: Path) -> None:
    found = records(doc)
    assert len(found) >= {PERFORMANCE: 4, TRAINING: 1}[doc]  # the scan works
    for above, header in found:
        source = SOURCE.match(above)
        assert source, f"{name(doc)}: the table {header[:60]!r} has no 'Source: ...' line above it"
        commands = COMMAND.findall(source["commands"])
        assert commands, f"{above[:80]!r} names no command"
        assert any(c.startswith(("make ", "python -m benchmarks.")) for c in commands), above[:80]
        assert all(runnable(c) for c in commands), f"{above[:80]!r} names a command this repository cannot run"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("doc", RECORDS, ids=name)
def test_every_commit_it_names_exists(doc: Path) -> None:
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True, text=True, check=True
    )
    if shallow.stdout.strip() == "true":
        pytest.skip("a shallow clone lacks the history")
    named = set(COMMIT.findall(prose(doc)))
    assert named, "the scan finds no commit"
    missing = [
        c for c in sorted(named) if subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=REPO).returncode
    ]
    assert missing == [], f"{name(doc)} names commits this repository does not have"


@pytest.mark.parametrize("doc", RECORDS, ids=name)
def test_every_throughput_and_speed_up_is_dated(doc: Path) -> None:
    """A figure in requests/s, texts/s or a multiple is in a section with a Source line or a paragraph naming its
    commit: a measurement of some past state, never an undated claim about the stack of today."""
    undated = []
    for section in HEADING.split(GENERATED.sub("", prose(doc))):
        if any(line.startswith("Source: ") for line in section.splitlines()):
            continue
        for paragraph in re.split(r"\n\s*\n|\n(?=- )", section):
            if FIGURE.search(paragraph) and not COMMIT.search(paragraph):
                undated.append(" ".join(paragraph.split())[:100])
    assert undated == []


@pytest.mark.parametrize("doc", RECORDS, ids=name)
def test_the_last_bench_run_is_not_restated(doc: Path) -> None:
    """The headline figures of docs/results/bench.json appear in the README's summary and benchmarks.md only."""
    record = json.loads((REPO / "docs" / "results" / "bench.json").read_text())
    cells = {(c["config"], c["endpoint"], c["concurrency"]): c for c in record["cells"]}
    forms = []
    for (_, _, clients), cell in cells.items():
        rps = cell["rps"]
        forms += [f"{rps:.0f} requests/s", f"{rps:.0f} req/s", f"{rps:.1f} req/s", f"{rps:.1f} requests/s"]
        if clients == 32:
            forms += [f"{cell['p99_ms']:.0f} ms"]
    for ceiling in record["ceilings"].values():
        forms += [f"{ceiling:.1f} texts/s", f"{ceiling:,.0f} texts/s"]
    gateway = cells[("gateway", "generate", 32)]["rps"]
    for peer in ("naive", "bentoml", "naive-threads"):
        ratio = gateway / cells[(peer, "generate", 32)]["rps"]
        forms += [f"{ratio:.2f}x", f"{ratio:.1f}x"]
    text = " ".join(prose(doc).split())
    # a figure as a whole number: "9 requests/s" is not in "59 requests/s"
    assert [form for form in forms if re.search(r"(?<![\d.,])" + re.escape(form), text)] == []
