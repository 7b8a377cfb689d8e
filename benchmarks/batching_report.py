"""The Markdown section of ``python -m benchmarks.batching``, rendered from its JSON record alone: docs/performance.md's
``batching`` section is this text for docs/results/batching.json (tests/benchmarks/test_batching.py checks it)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from torchserve_protocol.layout import REPO

SECTION = "batching"  # <!-- batching:begin --> ... <!-- batching:end -->
RECORD = REPO / "docs" / "results" / "batching.json"
TEXTS = {"cola": "CoLA in-domain dev sentences", "sentiment": "Google Play review texts"}
NOT_MEASURED = (
    "Not measured yet. `make bench-batching` (after `make serve`) measures the grid on the store's default `cola`\n"
    "archive and writes this section and `docs/results/batching.json`.\n"
)


def load(path: Path = RECORD) -> dict[str, Any] | None:
    """The last recorded run, or None before the first."""
    return json.loads(path.read_text()) if path.is_file() else None


def _median(runs: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in runs if r[field] is not None]
    return statistics.median(values) if values else None


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _connections(n: int) -> str:
    return f"{n} connection{'s' if n != 1 else ''}"


def _row(cell: dict[str, Any], record: dict[str, Any]) -> str:
    setting = f"{cell['batch_size']}, {cell['max_batch_delay_ms']} ms"
    own = record["archive_setting"]
    if (cell["batch_size"], cell["max_batch_delay_ms"]) == (own["batch_size"], own["max_batch_delay_ms"]):
        setting = f"**{setting}** (the archive's)"
    columns = [setting]
    for n in record["connections"]:
        runs = [r for r in cell["runs"] if r["connections"] == n]
        p50, p99 = _num(_median(runs, "p50_ms"), 1), _num(_median(runs, "p99_ms"), 1)
        columns += [_num(_median(runs, "rps"), 1), f"{p50} / {p99}", _num(_median(runs, "cpu_ms_per_request"), 2)]
    errors, requests = sum(r["errors"] for r in cell["runs"]), sum(r["requests"] for r in cell["runs"])
    columns.append(f"{errors:,} / {requests:,}")
    return "| " + " | ".join(columns) + " |"


def render(record: dict[str, Any] | None) -> str:
    """The section's body (ending with a newline)."""
    if record is None:
        return NOT_MEASURED
    base = record["base_model"] or f"not recorded (a `{record['architecture']}` without a training report)"
    workers = sorted({cell["served"]["workers"] for cell in record["cells"]})
    m = record["machine"]
    header = ["batch size, max batch delay"]
    for n in record["connections"]:
        header += [f"{_connections(n)}: req/s", "p50 / p99 ms", "CPU ms per request"]
    header.append("errors / requests")
    lines = [
        f"TorchServe direct (no gateway), `{record['archive']}` (model `{record['model']}` {record['version']}, base "
        f"model {base}), {' or '.join(map(str, workers))} worker(s) per cell as the archive has them; "
        f"{TEXTS.get(record['texts'], record['texts'])}, one text per request; wrk closed loop at "
        f"{' and '.join(map(_connections, record['connections']))}, {record['seconds']:g} s per run after "
        f"{record['warmup']:g} s of warm-up per cell, {record['repeats']} repetition(s) (medians).",
        "",
        f"- Measured {record['started']} ({record['minutes']} min) on {m['cpu']}, {m['cores']} cores "
        f"({m['isa']}); load average before: {record['loadavg_before']}; other heavy processes seen: "
        + ("; ".join(f"`{b}`" for b in record["busy"]) if record["busy"] else "none"),
        f"- Command: `{record['command']}`",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *(_row(cell, record) for cell in record["cells"]),
        "",
        "Each cell's batch size and delay are what TorchServe's describe-model answered while the cell was registered "
        "(a cell served with other values stops the run). CPU: seconds of TorchServe's whole process tree (Java "
        "frontend and workers) per answered request.",
    ]
    return "\n".join(lines) + "\n"
