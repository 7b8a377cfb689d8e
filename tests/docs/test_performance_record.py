"""docs/performance.md is a record of dated measurements: every table says what produced it (a command of this
repository, the commit, the date, the machine), every throughput or speed-up in its prose is dated, and it does not
restate the figures of the last `make bench` (docs/results/bench.json: they live in the README and benchmarks.md)."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess

import pytest

from tests.docs.markdown import prose
from torchserve_protocol.layout import REPO

DOC = REPO / "docs" / "performance.md"
SOURCE = re.compile(  # Source: <commands>; commit <sha> (<date>)...; <the machine's state>
    r"^Source: (?P<commands>.+?); commit (?P<commit>[0-9a-f]{7,40})\b.*?\((?P<date>\d{4}-\d\d-\d\d)\)"
    r".*?; (?P<machine>.+)$"
)
COMMAND = re.compile(r"`((?:python -m|make) [^`]+)`")
COMMIT = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b")
FIGURE = re.compile(r"\d[\d,.]*\s*(?:requests/s|req/s|texts/s)|\b\d+(?:\.\d+)?x\b")
HEADING = re.compile(r"^#+ ", flags=re.M)


def tables() -> list[tuple[str, str]]:
    """(the line above each table, the table's header line)."""
    lines = [line for line in prose(DOC).splitlines() if line.strip()]
    return [
        (lines[i - 1], line)
        for i, line in enumerate(lines)
        if line.startswith("|") and not lines[i - 1].startswith("|") and i + 1 < len(lines)
    ]


def runnable(command: str) -> bool:
    words = command.split()
    if words[0] == "make":
        targets = re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.M)
        return words[1] in targets
    module = words[2]
    if not module.startswith("benchmarks."):
        return importlib.util.find_spec(module) is not None
    return hasattr(importlib.import_module(module), "main")


def test_every_table_says_what_produced_it() -> None:
    found = tables()
    assert len(found) >= 4  # the scan works
    for above, header in found:
        source = SOURCE.match(above)
        assert source, f"docs/performance.md: the table {header[:60]!r} has no 'Source: ...' line above it"
        commands = COMMAND.findall(source["commands"])
        assert commands, f"{above[:80]!r} names no command"
        assert any(c.startswith(("make ", "python -m benchmarks.")) for c in commands), above[:80]
        assert all(runnable(c) for c in commands), f"{above[:80]!r} names a command this repository cannot run"


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_every_commit_it_names_exists() -> None:
    shallow = subprocess.run(
        ["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True, text=True, check=True
    )
    if shallow.stdout.strip() == "true":
        pytest.skip("a shallow clone lacks the history")
    named = set(COMMIT.findall(prose(DOC)))
    assert named, "the scan finds no commit"
    missing = [
        c for c in sorted(named) if subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=REPO).returncode
    ]
    assert missing == [], "docs/performance.md names commits this repository does not have"


def test_every_throughput_and_speed_up_is_dated() -> None:
    """A figure in requests/s, texts/s or a multiple is in a section with a Source line or a paragraph naming its
    commit: a measurement of some past state, never an undated claim about the stack of today."""
    undated = []
    for section in HEADING.split(prose(DOC)):
        if any(line.startswith("Source: ") for line in section.splitlines()):
            continue
        for paragraph in re.split(r"\n\s*\n|\n(?=- )", section):
            if FIGURE.search(paragraph) and not COMMIT.search(paragraph):
                undated.append(" ".join(paragraph.split())[:100])
    assert undated == []


def test_the_last_bench_run_is_not_restated() -> None:
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
    text = " ".join(prose(DOC).split())
    assert [form for form in forms if form in text] == []
