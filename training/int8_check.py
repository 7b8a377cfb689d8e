"""Choose what the handler serves: int8 settings checked against fp32 through the handler's own code, then one
softmax temperature fitted on validation, then a check that a text's answer does not depend on its batch.

Every candidate is loaded exactly as packaging would build it (for the ``onnxruntime`` engine, the very
``model.onnx``), scored on the same validation texts as fp32, and the first within ``max_drop`` of fp32's metric is
served. Candidates and the measured choice are in docs/training.md.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from handlers.text_classification import Settings, load, predict
from training import onnx_build
from training.calibration import CalibrationStudy, temperature_study
from training.package import ServingConfig
from training.tasks import Examples, Splits, Task, compute_metrics, fmt

log = logging.getLogger("training")

SERVED_BATCH = ServingConfig().batch_size  # requests per handler batch in the archive's model-config.yaml
INVARIANCE_TEXTS = 64  # validation texts sent alone and together in the batch-invariance check


@dataclass(frozen=True)
class Served:
    """One way the handler can serve the model: the engine and int8 part of the archive's handler settings."""

    engine: str
    quantize: bool
    quantization: str = "per_channel"
    keep_fp32: tuple[str, ...] = ()
    activations: str | None = None  # onnxruntime int8: "static" or "dynamic"; None leaves the handler's default

    def as_dict(self) -> dict[str, Any]:
        """As metrics.json and the handler section carry it (no ``activations`` key where it is None)."""
        fixed = {"engine": self.engine, "quantize": self.quantize, "quantization": self.quantization}
        keys = fixed | {"keep_fp32": list(self.keep_fp32)}
        return keys if self.activations is None else keys | {"activations": self.activations}

    def settings(self, *, max_length: int, threads: int) -> Settings:
        """The handler's settings for this candidate, without the warm-up forward (the check loads many)."""
        fixed = {"max_length": max_length, "num_threads": threads, "warmup": False}
        return Settings.model_validate(fixed | self.as_dict() | {"keep_fp32": self.keep_fp32})


FP32 = Served(engine="torch", quantize=False)


@dataclass(frozen=True)
class Candidate:
    served: Served
    report_only: bool = False  # scored for the report (with --int8-study), never served


@dataclass(frozen=True)
class Scored:
    """A candidate measured against fp32 on validation (and, for the chosen one, on test)."""

    served: Served
    validation: dict[str, float]
    drop: float  # fp32's task metric minus this candidate's
    flips: float  # share of validation labels that differ from fp32's
    eligible: bool
    test: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        row = {"served": self.served.as_dict(), "validation": self.validation, "drop": self.drop}
        row |= {"flips": self.flips, "eligible": self.eligible}
        return row if self.test is None else row | {"test": self.test}


@dataclass(frozen=True)
class BatchInvariance:
    texts: int
    max_abs_delta: float  # the largest change of any probability between a text alone and in the batch


@dataclass(frozen=True)
class CheckConfig:
    metric_drop: float  # the most the served model may lose against fp32 on the task's metric
    engine: str
    quantization: str  # auto | per_channel | per_tensor | none
    keep_fp32: tuple[str, ...]
    max_length: int
    threads: int
    study: bool = False  # also score the slower fallbacks and the report-only settings (docs/training.md's tables)
    per_module: bool = False  # then try int8 for the chosen setting's fp32 modules, one module at a time


@dataclass(frozen=True)
class Int8Check:
    """What the check measured and chose; ``chosen`` is one of ``candidates``, or None when none qualifies."""

    metric: str
    max_drop: float
    batch_size: int
    fp32_validation: dict[str, float]
    candidates: list[Scored]
    chosen: Scored | None
    fp32_test: dict[str, float] | None = None
    calibration: CalibrationStudy | None = None
    batch_invariance: BatchInvariance | None = None

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration else 1.0

    def as_dict(self) -> dict[str, Any]:
        """``metrics.json``'s ``quantization`` section."""
        fp32 = {"validation": self.fp32_validation} | ({"test": self.fp32_test} if self.fp32_test else {})
        out: dict[str, Any] = {"metric": self.metric, "max_drop": self.max_drop, "batch_size": self.batch_size}
        out |= {"fp32": fp32, "candidates": [c.as_dict() for c in self.candidates]}
        out["chosen"] = self.chosen.as_dict() if self.chosen else None
        if self.calibration is not None:
            out["calibration"] = asdict(self.calibration)
        if self.batch_invariance is not None:
            out["batch_invariance"] = asdict(self.batch_invariance)
        return out


def served_probabilities(model_dir: Path, ex: Examples, settings: Settings) -> np.ndarray:
    """Probabilities from the handler's own ``load`` + ``predict`` (same tokenization, quantization and softmax), in
    batches of the served batch size of similar-length texts, as TorchServe hands them over under load."""
    loaded = load(model_dir, settings=settings)
    probs = np.zeros((len(ex), len(loaded.labels)), dtype=np.float64)
    order = sorted(range(len(ex)), key=lambda i: len(ex.texts[i]))
    for start in range(0, len(order), SERVED_BATCH):
        idx = order[start : start + SERVED_BATCH]
        probs[idx] = predict(loaded, [ex.texts[i] for i in idx], max_length=settings.max_length).double().numpy()
    return probs


def quantization_candidates(model_dir: Path, cfg: CheckConfig) -> list[Candidate]:
    """Served settings to try, fastest first; ``auto`` serves the first within ``metric_drop``.

    The ONNX Runtime candidates use static activation scales (calibrated at packaging), so that a text's answer does
    not depend on the other texts of its batch; dynamic all-int8 is measured and reported only. On the MiniLM and
    MPNet models measured (docs/training.md) the FFN down-projections (``*.output.dense`` outside attention, whose
    input is the wide post-GELU activation) and the early layers lose most in int8; the fallbacks keep those fp32.
    """
    static = "static" if cfg.engine == "onnxruntime" else None
    if cfg.quantization == "none":
        return [Candidate(replace(FP32, engine=cfg.engine))]
    if cfg.quantization != "auto":
        fixed = Served(cfg.engine, True, cfg.quantization, cfg.keep_fp32, activations=static)
        return [Candidate(fixed)]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    layer_of = {n: int(m.group(1)) for n in linear if (m := re.search(r"\.layer\.(\d+)\.", n))}
    half = (max(layer_of.values()) + 1) // 2 if layer_of else 0
    ffn_out = [n for n in linear if n.endswith("output.dense") and "attention" not in n]
    ffn_in = [n for n in linear if ".intermediate." in n]
    early = [n for n in linear if n in layer_of and layer_of[n] < half]
    groups = [[], ffn_out, ffn_out + ffn_in, sorted(set(ffn_out + early))]
    unique = [g for i, g in enumerate(groups) if g not in groups[:i] and (not i or g)]
    base = Served(cfg.engine, True, "per_channel", activations=static)
    candidates = [Candidate(replace(base, keep_fp32=tuple(g))) for g in unique]
    candidates.append(Candidate(replace(FP32, engine=cfg.engine)))  # the last resort: never refuse over int8 alone
    candidates.append(Candidate(replace(base, quantization="per_tensor"), report_only=True))
    if static:
        candidates.append(Candidate(replace(base, activations="dynamic"), report_only=True))
    return candidates


class ServedViews:
    """The directory the handler loads for each setting: ``best_dir`` itself for the torch engine; for
    onnxruntime, a view of it with the ``model.onnx`` built for that setting (built once per setting, from one fp32
    export, under ``scratch``; the chosen setting also runs the test set and the batch-invariance check)."""

    def __init__(self, best_dir: Path, scratch: Path) -> None:
        self.best_dir = best_dir
        self.scratch = scratch
        self.fp32_export: Path | None = None
        self.views: dict[Settings, Path] = {}

    def __call__(self, settings: Settings) -> Path:
        if settings.engine == "torch":
            return self.best_dir
        if settings not in self.views:
            self.fp32_export = self.fp32_export or onnx_build.export_fp32(self.best_dir, self.scratch / "fp32.onnx")
            view = Path(tempfile.mkdtemp(dir=self.scratch))
            self.views[settings] = onnx_build.served_view(self.best_dir, view, settings, fp32=self.fp32_export)
        return self.views[settings]


def check(task: Task, splits: Splits, cfg: CheckConfig, best_dir: Path, scratch_parent: Path) -> Int8Check:
    """fp32 vs int8 side by side on the same validation (and test) texts, through the handler's code; then the
    chosen setting's temperature and batch invariance."""
    scratch = Path(tempfile.mkdtemp(prefix="quant-check-", dir=scratch_parent))
    views = ServedViews(best_dir, scratch)

    def probabilities(ex: Examples, served: Served) -> np.ndarray:
        settings = served.settings(max_length=cfg.max_length, threads=cfg.threads)
        return served_probabilities(views(settings), ex, settings)

    try:
        result = compare(task, splits, cfg, quantization_candidates(best_dir, cfg), probabilities)
        if result.chosen is None:
            return result
        settings = result.chosen.served.settings(max_length=cfg.max_length, threads=cfg.threads)
        return replace(result, batch_invariance=batch_invariance(views(settings), splits.validation, settings))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        torch.set_num_threads(cfg.threads)  # the handler's load() sets its own thread count


def score(candidate: Candidate, probs: np.ndarray, labels: list[int], *, fp32_preds: list[int], metric: str) -> Scored:
    """``candidate``'s validation ``probs`` against the labels and against fp32's predictions."""
    preds = probs.argmax(axis=1).tolist()
    metrics = compute_metrics(labels, preds)
    drop = compute_metrics(labels, fp32_preds)[metric] - metrics[metric]
    flips = sum(a != b for a, b in zip(preds, fp32_preds, strict=True)) / max(1, len(preds))
    return Scored(candidate.served, metrics, drop, flips, eligible=not candidate.report_only)


def compare(
    task: Task,
    splits: Splits,
    cfg: CheckConfig,
    candidates: list[Candidate],
    probabilities: Callable[[Examples, Served], np.ndarray],
) -> Int8Check:
    """Score ``candidates`` in order until one qualifies (every one with ``cfg.study``); the chosen one is also
    scored on test, and its temperature fitted."""
    val = splits.validation
    fp32_preds = probabilities(val, FP32).argmax(axis=1).tolist()
    scored: list[Scored] = []
    chosen: Scored | None = None
    chosen_probs: np.ndarray | None = None
    for candidate in candidates:
        if (candidate.report_only or chosen is not None) and not cfg.study:
            continue  # the first setting within the bound is served: the slower ones need not be scored
        probs = probabilities(val, candidate.served)
        row = score(candidate, probs, val.labels, fp32_preds=fp32_preds, metric=task.metric)
        scored.append(row)
        if chosen is None and row.eligible and row.drop <= cfg.metric_drop:
            chosen, chosen_probs = row, probs
        s = row.served
        log.info(
            "%s %s %s %s keep_fp32=%d: %s (drop %.4f, %.1f%% labels differ from fp32)",
            s.engine,
            "int8" if s.quantize else "fp32",
            (s.activations or "dynamic") if s.quantize else "",
            s.quantization,
            len(s.keep_fp32),
            fmt(row.validation),
            row.drop,
            100 * row.flips,
        )
    if chosen is not None and chosen_probs is not None and chosen.served.keep_fp32 and cfg.per_module:
        tried, chosen, chosen_probs = per_module(chosen, chosen_probs, cfg, probabilities, val, fp32_preds, task.metric)
        scored += tried
    result = Int8Check(
        metric=task.metric,
        max_drop=cfg.metric_drop,
        batch_size=SERVED_BATCH,
        fp32_validation=compute_metrics(val.labels, fp32_preds),
        candidates=scored,
        chosen=chosen,
    )
    if chosen is None or chosen_probs is None:
        return result
    if splits.test is None:
        return replace(result, calibration=temperature_study(chosen_probs, val.labels))
    test = splits.test
    fp32_test = compute_metrics(test.labels, probabilities(test, FP32).argmax(axis=1).tolist())
    test_probs = probabilities(test, chosen.served)
    tested = replace(chosen, test=compute_metrics(test.labels, test_probs.argmax(axis=1).tolist()))
    return replace(
        result,
        candidates=[tested if c is chosen else c for c in scored],
        chosen=tested,
        fp32_test=fp32_test,
        calibration=temperature_study(chosen_probs, val.labels, test_probs, test.labels),
    )


def per_module(
    chosen: Scored,
    probs: np.ndarray,
    cfg: CheckConfig,
    probabilities: Callable[[Examples, Served], np.ndarray],
    val: Examples,
    fp32_preds: list[int],
    metric: str,
) -> tuple[list[Scored], Scored, np.ndarray]:
    """int8 for more of the modules ``chosen`` keeps fp32, with a quality check per module: each made int8 alone (the
    rest as chosen) and scored; then, least harmful first, each one that stayed within the bound alone joins the int8
    modules if the whole still does. Returns every row scored, the setting served and its probabilities."""

    def scored(keep: tuple[str, ...]) -> tuple[Scored, np.ndarray]:
        candidate = Candidate(replace(chosen.served, keep_fp32=keep))
        p = probabilities(val, candidate.served)
        row = score(candidate, p, val.labels, fp32_preds=fp32_preds, metric=metric)
        log.info("int8 per module: %d kept fp32: %s (drop %.4f)", len(keep), fmt(row.validation), row.drop)
        return row, p

    kept = chosen.served.keep_fp32
    alone = {module: scored(tuple(m for m in kept if m != module)) for module in kept}
    tried = [row for row, _ in alone.values()]
    for module in sorted((m for m in kept if alone[m][0].drop <= cfg.metric_drop), key=lambda m: alone[m][0].drop):
        keep = tuple(m for m in chosen.served.keep_fp32 if m != module)
        row, p = alone[module] if len(keep) == len(kept) - 1 else scored(keep)
        if row.drop <= cfg.metric_drop:
            chosen, probs = row, p
        if row is not alone[module][0]:
            tried.append(row)
    return tried, chosen, probs


def more_int8(
    task: Task, val: Examples, served: Served, best_dir: Path, scratch: Path, *, max_drop: float, max_length: int
) -> tuple[list[Scored], Scored]:
    """:func:`per_module` from a setting already served (``benchmarks.levers``), scored against the fp32 model as
    the check scores it: every row scored (``served`` first) and the setting it would serve instead."""
    views = ServedViews(best_dir, scratch)

    def probabilities(ex: Examples, candidate: Served) -> np.ndarray:
        settings = candidate.settings(max_length=max_length, threads=1)
        return served_probabilities(views(settings), ex, settings)

    fp32_preds = probabilities(val, FP32).argmax(axis=1).tolist()
    probs = probabilities(val, served)
    start = score(Candidate(served), probs, val.labels, fp32_preds=fp32_preds, metric=task.metric)
    cfg = CheckConfig(max_drop, served.engine, served.quantization, served.keep_fp32, max_length, 1, per_module=True)
    tried, chosen, _ = per_module(start, probs, cfg, probabilities, val, fp32_preds, task.metric)
    return [start, *tried], chosen


def batch_invariance(model_dir: Path, ex: Examples, settings: Settings) -> BatchInvariance:
    """The largest change of any probability between a text sent alone and the same text in one batch with up to
    :data:`INVARIANCE_TEXTS` - 1 others of every length (the validation texts, shortest to longest)."""
    loaded = load(model_dir, settings=settings)
    step = max(1, len(ex) // INVARIANCE_TEXTS)
    texts = sorted(ex.texts[::step][:INVARIANCE_TEXTS], key=len)
    together = predict(loaded, texts, max_length=settings.max_length)
    alone = torch.cat([predict(loaded, [t], max_length=settings.max_length) for t in texts])
    delta = float((together - alone).abs().max())
    log.info("batch invariance: max |p(alone) - p(in a batch of %d)| = %.2e", len(texts), delta)
    return BatchInvariance(texts=len(texts), max_abs_delta=delta)
