"""The Markdown section of ``python -m benchmarks.levers``, rendered from its JSON record alone: docs/performance.md's
``levers`` section is this text for docs/results/levers.json (tests/benchmarks/test_levers.py checks it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torchserve_protocol.layout import REPO

SECTION = "levers"  # <!-- levers:begin --> ... <!-- levers:end -->
RECORD = REPO / "docs" / "results" / "levers.json"
WHAT = {
    "served": "the archive as served",
    "threads": "one process, intra-op threads = cores",
    "no length groups": "one forward per batch, padded to its longest text",
    "fusions": "ONNX Runtime's transformer fusions before int8",
    "int8 per module": "int8 for the fp32 modules that passed alone",
}


def load(path: Path = RECORD) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _quality(quality: dict[str, float] | None, metric: str) -> tuple[str, str]:
    if quality is None:
        return "= served", "-"
    return f"{quality['metric']:.3f} {metric}", f"{100 * quality['changed']:.1f}%"


def _modules(names: list[str]) -> str:
    """``mpnet.encoder.layer.3.output.dense`` -> ``3.output.dense``: the layer and module, briefly."""
    short = [n.split("encoder.layer.", 1)[-1] for n in names]
    return ", ".join(f"`{n}`" for n in short) if len(short) <= 3 else f"{len(short)}: " + ", ".join(short)


def _archive(measured: dict[str, Any]) -> list[str]:
    metric = "MCC" if measured["metric"] == "mcc" else measured["metric"]
    served = next(v for v in measured["variants"] if v["name"] == "served")
    lines = [
        f"**`{measured['archive']}`** ({measured['task']}; fp32 modules as served: {len(measured['keep_fp32'])})",
        "",
        "| lever | processes x threads | texts/s (median) | vs served | runs | validation | labels changed |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for v in measured["variants"]:
        threads = v["handler"].get("num_threads", 1)
        name = v["name"] if v["name"] not in WHAT else f"{v['name']}: {WHAT[v['name']]}"
        score, changed = _quality(v["quality"], metric)
        runs = ", ".join(f"{r:.0f}" for r in v["texts_per_s"])
        ratio = v["median"] / served["median"]
        lines.append(f"| {name} | {v['processes']} x {threads} | {v['median']:.1f} | {ratio:.2f}x | {runs} | "
                     f"{score} | {changed} |")  # fmt: skip
    if measured["fusions"] is not None:
        fused = ", ".join(f"{op} {n}" for op, n in sorted(measured["fusions"].items())) or "none"
        lines += ["", f"Fused operators: {fused}."]
    if measured["modules"]:
        lines += [
            "",
            "| int8 per module: fp32 modules | made int8 (vs the archive) | validation | drop vs fp32 | labels changed "
            "vs fp32 | within the bound |",
            "|---:|---|---:|---:|---:|---|",
        ]
        lines += [
            f"| {m['keep_fp32']}{' **(chosen)**' if m['served'] else ''} | {_modules(m['int8'])} | "
            f"{m['metric']:.3f} | {m['drop']:+.3f} | {100 * m['flips']:.1f}% | {'yes' if m['within'] else 'no'} |"
            for m in measured["modules"]
        ]
    elif measured["weights"] is None:
        lines += ["", "No rebuilds: the archive's run folder (its fp32 weights) was not found or it is not int8."]
    return lines


def render(record: dict[str, Any] | None) -> str:
    """The section's body (ending with a newline)."""
    if record is None:
        return (
            "Not measured yet: `python -m benchmarks.levers <archives> --record ... --doc ...` writes this section.\n"
        )
    m = record["machine"]
    lines = [
        f"In-process, batches of {record['batch']} of the task's texts, {record['seconds']:g} s per run, "
        f"{record['repeats']} interleaved round(s); validation through the handler's `predict`. `int8 per module`: the "
        "settings `--int8-per-module` scored from the archive's (each fp32 module made int8 alone, then together), "
        "against the fp32 model, as the training run's check scores them.",
        "",
        f"- Measured {record['started']} ({record['minutes']} min) on {m['cpu']}, {m['cores']} cores ({m['isa']}), "
        f"onnxruntime {m['onnxruntime']}; load average before the speeds: {record['loadavg_before']}; other heavy "
        "processes seen: " + ("; ".join(f"`{b}`" for b in record["busy"]) if record["busy"] else "none"),
        f"- Command: `{record['command']}`",
    ]
    for measured in record["archives"]:
        lines += ["", *_archive(measured)]
    return "\n".join(lines) + "\n"
