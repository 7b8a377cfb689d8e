"""Medians of the repetitions, the Markdown report (with the issue's targets checked) and the PNG plot."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_NAMES = {
    "naive": "naive baseline",
    "naive-threads": "naive baseline, all threads",
    "bentoml": "BentoML (peer)",
    "torchserve": "TorchServe direct",
    "gateway": "gateway (full stack)",
}
MODEL_OF = {"generate": "cola", "generate/batch": "cola", "predict": "sentiment", "predict/batch": "sentiment"}


@dataclass(frozen=True)
class Cell:
    config: str
    endpoint: str
    concurrency: int
    rps: float
    texts_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # summed over repetitions
    requests: int  # summed over repetitions
    cpu_s: dict[str, float]  # per server role, median CPU seconds per run
    client_cpu_s: float
    repeats: int


def aggregate(runs: Sequence[dict[str, Any]]) -> list[Cell]:
    keys = list(dict.fromkeys((r["config"], r["endpoint"], r["concurrency"]) for r in runs))
    cells = []
    for key in keys:
        rs = [r for r in runs if (r["config"], r["endpoint"], r["concurrency"]) == key]

        def med(field: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.median(r[field] for r in rs)

        roles = rs[0]["cpu_s"].keys()
        cells.append(
            Cell(
                *key,
                rps=med("rps"),
                texts_per_s=med("texts_per_s"),
                p50_ms=med("p50_ms"),
                p90_ms=med("p90_ms"),
                p99_ms=med("p99_ms"),
                errors=sum(r["errors"] for r in rs),
                requests=sum(r["requests"] for r in rs),
                cpu_s={role: statistics.median(r["cpu_s"][role] for r in rs) for role in roles},
                client_cpu_s=med("client_cpu_s"),
                repeats=len(rs),
            )
        )
    return cells


def find(cells: Sequence[Cell], config: str, endpoint: str, concurrency: int) -> Cell | None:
    return next((c for c in cells if (c.config, c.endpoint, c.concurrency) == (config, endpoint, concurrency)), None)


def targets(cells: Sequence[Cell], ceilings: dict[str, float]) -> list[str]:
    """The issue's targets for the full stack, each with the measured numbers and a verdict."""
    rows = ["| target | measured | verdict |", "|---|---|---|"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    gw32, nv32 = find(cells, "gateway", "generate", 32), find(cells, "naive", "generate", 32)
    if gw32 and nv32 and nv32.rps:
        ratio = gw32.rps / nv32.rps
        rows.append(
            f"| /generate at 32 clients >= 3.5x naive | {gw32.rps:.1f} vs {nv32.rps:.1f} req/s = {ratio:.2f}x "
            f"| {verdict(ratio >= 3.5)} |"
        )
    peer32 = find(cells, "bentoml", "generate", 32)
    if gw32 and peer32 and peer32.rps:
        ratio = gw32.rps / peer32.rps
        rows.append(
            f"| /generate at 32 clients ahead of the peer framework (BentoML) | {gw32.rps:.1f} vs {peer32.rps:.1f} "
            f"req/s = {ratio:.2f}x | {verdict(ratio > 1)} |"
        )
    if gw32 and ceilings.get("cola"):
        share = gw32.rps / ceilings["cola"]
        rows.append(
            f"| /generate at 32 clients >= 90% of the in-process ceiling | {gw32.rps:.1f} of "
            f"{ceilings['cola']:.1f} texts/s = {share:.0%} | {verdict(share >= 0.9)} |"
        )
    for endpoint in ("generate", "predict"):
        cell = find(cells, "gateway", endpoint, 32)
        if cell and cell.rps:
            # a closed loop of 32 clients waits 32 / throughput on average (Little's law): p99 cannot be below it
            floor = 32 / cell.rps * 1000
            rows.append(
                f"| p99 at 32 clients < 150 ms (/{endpoint}) | {cell.p99_ms:.0f} ms (the mean alone is 32 clients / "
                f"{cell.rps:.0f} req/s = {floor:.0f} ms) | {verdict(cell.p99_ms < 150)} |"
            )
    for endpoint in ("generate", "predict"):
        cell = find(cells, "gateway", endpoint, 32)
        if cell and cell.requests and "gateway" in cell.cpu_s:
            per_request = {role: cell.cpu_s[role] / (cell.requests / cell.repeats) * 1000
                           for role in ("gateway", "edge") if role in cell.cpu_s}  # fmt: skip
            measured = ", ".join(f"{role} {ms:.2f} ms" for role, ms in per_request.items())
            rows.append(
                f"| CPU per request of the gateway and the edge (/{endpoint}, 32 clients) | {measured} | reported |"
            )
    gw1, nv1 = find(cells, "gateway", "generate", 1), find(cells, "naive", "generate", 1)
    if gw1 and nv1:
        gap = gw1.p50_ms - nv1.p50_ms
        rows.append(
            f"| single-request p50 within 5 ms of naive (/generate, 1 client) | {gw1.p50_ms:.1f} vs "
            f"{nv1.p50_ms:.1f} ms ({gap:+.1f} ms) | {verdict(gap <= 5)} |"
        )
    return rows if len(rows) > 2 else ["(the cells the targets need were not measured in this run)"]


def cpu_text(cpu: dict[str, float]) -> str:
    return " + ".join(f"{role} {s:.1f}" for role, s in cpu.items())


def tables(cells: Sequence[Cell]) -> list[str]:
    out: list[str] = []
    for endpoint in dict.fromkeys(c.endpoint for c in cells):
        out += [
            f"### `/{endpoint}` (model `{MODEL_OF[endpoint]}`)",
            "",
            "| configuration | clients | req/s | texts/s | p50 ms | p90 ms | p99 ms | errors / requests "
            "| server CPU s per run (by process) | wrk CPU s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        rows = sorted((c for c in cells if c.endpoint == endpoint), key=lambda c: (c.concurrency, c.config))
        for c in rows:
            out.append(
                f"| {CONFIG_NAMES[c.config]} | {c.concurrency} | {c.rps:.1f} | {c.texts_per_s:.1f} | {c.p50_ms:.1f} "
                f"| {c.p90_ms:.1f} | {c.p99_ms:.1f} | {c.errors} / {c.requests} | {cpu_text(c.cpu_s)} "
                f"| {c.client_cpu_s:.2f} |"
            )
        out.append("")
    return out


def plot(cells: Sequence[Cell], ceilings: dict[str, float], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    endpoints = list(dict.fromkeys(c.endpoint for c in cells))
    fig, axes = plt.subplots(2, len(endpoints), figsize=(4.2 * len(endpoints), 7), squeeze=False)
    for col, endpoint in enumerate(endpoints):
        top, bottom = axes[0][col], axes[1][col]
        for config in CONFIG_NAMES:
            rows = sorted(
                (c for c in cells if (c.endpoint, c.config) == (endpoint, config)), key=lambda c: c.concurrency
            )
            if not rows:
                continue
            xs = [c.concurrency for c in rows]
            top.plot(xs, [c.texts_per_s for c in rows], marker="o", label=CONFIG_NAMES[config])
            bottom.plot(xs, [c.p99_ms for c in rows], marker="o", label=CONFIG_NAMES[config])
        ceiling = ceilings.get(MODEL_OF[endpoint])
        if ceiling:
            top.axhline(ceiling, linestyle="--", color="grey", label="in-process ceiling (batch 8)")
        top.set_title(f"/{endpoint}")
        top.set_ylabel("texts/s (median)")
        bottom.set_ylabel("p99 latency ms (median)")
        bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.grid(True, alpha=0.3)
        top.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(cells: Sequence[Cell], ceilings: dict[str, float], rss: dict[str, float], *, when: str) -> str:
    """The README's short form of a run (its ``bench:summary`` section): ``/generate`` for each configuration at 1 and
    32 clients, the targets, the memory; the whole report is docs/benchmarks.md."""
    configs = [c for c in CONFIG_NAMES if find(cells, c, "generate", 32) or find(cells, c, "generate", 1)]
    endpoints = sorted({c.endpoint for c in cells})
    clients = sorted({c.concurrency for c in cells})
    measured = f"{' and '.join('/' + e for e in endpoints)} at {' and '.join(map(str, clients))} clients"
    lines = [
        f"`/generate` on this CPU, {when} (medians; the whole run, {measured}: "
        "[docs/benchmarks.md](docs/benchmarks.md)):",
        "",
        "| | " + " | ".join(CONFIG_NAMES[c] for c in configs) + " |",
        "|---|" + "---:|" * len(configs),
    ]
    one = [find(cells, c, "generate", 1) for c in configs]
    many = [find(cells, c, "generate", 32) for c in configs]
    lines.append("| 1 client: p50 | " + " | ".join(f"{c.p50_ms:.1f} ms" if c else "-" for c in one) + " |")
    lines.append(
        "| 32 clients: requests/s (p99) | "
        + " | ".join(f"{c.rps:,.0f} ({c.p99_ms:,.0f} ms)" if c else "-" for c in many)
        + " |"
    )
    if ceilings:
        lines += ["", "In-process ceiling: " + ", ".join(f"{m} {v:,.0f} texts/s" for m, v in sorted(ceilings.items()))]
    if rss:
        lines += ["", "Resident memory: " + ", ".join(f"{CONFIG_NAMES[k]} {v:,.0f} MiB" for k, v in rss.items())]
    return "\n".join([*lines, "", *targets(cells, ceilings)]) + "\n"
