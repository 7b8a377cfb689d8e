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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from handlers.text_classification import Settings, load, predict
from training import calibration, onnx_build, report
from training.package import ServingConfig
from training.tasks import Examples, Splits, Task, compute_metrics

log = logging.getLogger("training")

SERVED_BATCH = ServingConfig().batch_size  # requests per handler batch in the archive's model-config.yaml
FP32: dict[str, Any] = {"engine": "torch", "quantize": False, "quantization": "per_channel", "keep_fp32": []}
INVARIANCE_TEXTS = 64  # validation texts sent alone and together in the batch-invariance check


@dataclass(frozen=True)
class CheckConfig:
    metric_drop: float  # the most the served model may lose against fp32 on the task's metric
    engine: str
    quantization: str  # auto | per_channel | per_tensor | none
    keep_fp32: tuple[str, ...]
    max_length: int
    threads: int
    study: bool = False  # also score the slower fallbacks and the report-only settings (docs/training.md's tables)


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


def quantization_candidates(model_dir: Path, cfg: CheckConfig) -> list[dict[str, Any]]:
    """Served settings to try, fastest first; ``auto`` serves the first within ``metric_drop``.

    The ONNX Runtime candidates use static activation scales (calibrated at packaging), so that a text's answer does
    not depend on the other texts of its batch; dynamic all-int8 is measured and reported only. On the MiniLM and
    MPNet models measured (docs/training.md) the FFN down-projections (``*.output.dense`` outside attention, whose
    input is the wide post-GELU activation) and the early layers lose most in int8; the fallbacks keep those fp32.
    """
    static = {"activations": "static"} if cfg.engine == "onnxruntime" else {}
    if cfg.quantization == "none":
        return [FP32 | {"engine": cfg.engine}]
    if cfg.quantization != "auto":
        fixed = {"engine": cfg.engine, "quantize": True, "quantization": cfg.quantization}
        return [fixed | {"keep_fp32": list(cfg.keep_fp32)} | static]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    layer_of = {n: int(m.group(1)) for n in linear if (m := re.search(r"\.layer\.(\d+)\.", n))}
    half = (max(layer_of.values()) + 1) // 2 if layer_of else 0
    ffn_out = [n for n in linear if n.endswith("output.dense") and "attention" not in n]
    ffn_in = [n for n in linear if ".intermediate." in n]
    early = [n for n in linear if n in layer_of and layer_of[n] < half]
    groups = [[], ffn_out, ffn_out + ffn_in, sorted(set(ffn_out + early))]
    unique = [g for i, g in enumerate(groups) if g not in groups[:i] and (not i or g)]
    base = {"engine": cfg.engine, "quantize": True, "quantization": "per_channel"}
    candidates = [base | {"keep_fp32": g} | static for g in unique]
    candidates.append(FP32 | {"engine": cfg.engine})  # the last resort: never refuse to serve over int8 alone
    report_only = [base | {"keep_fp32": [], "quantization": "per_tensor", "report_only": True} | static]
    if static:
        report_only.append(base | {"keep_fp32": [], "activations": "dynamic", "report_only": True})
    return candidates + report_only


def settings_of(served: dict[str, Any], cfg: CheckConfig) -> Settings:
    return Settings(
        max_length=cfg.max_length,
        num_threads=cfg.threads,
        warmup=False,
        engine=served["engine"],
        quantize=served["quantize"],
        quantization=served["quantization"],
        keep_fp32=tuple(served["keep_fp32"]),
        activations=served.get("activations", "dynamic"),
    )


def check(task: Task, splits: Splits, cfg: CheckConfig, best_dir: Path, scratch_parent: Path) -> dict[str, Any]:
    """fp32 vs int8 side by side on the same validation (and test) texts, through the handler's code; then the
    chosen setting's temperature and batch invariance. ``result["chosen"]`` is None when no candidate qualifies."""
    scratch = Path(tempfile.mkdtemp(prefix="quant-check-", dir=scratch_parent))
    exported: Path | None = None
    views: dict[Settings, Path] = {}  # one model.onnx per setting, built once (the chosen one also runs the test set)

    def view_of(settings: Settings) -> Path:
        nonlocal exported
        if settings.engine == "torch":
            return best_dir
        if settings not in views:
            exported = exported or onnx_build.export_fp32(best_dir, scratch / "fp32.onnx")
            views[settings] = onnx_build.served_view(
                best_dir, Path(tempfile.mkdtemp(dir=scratch)), settings, fp32=exported
            )
        return views[settings]

    def run(ex: Examples, served: dict[str, Any]) -> np.ndarray:
        settings = settings_of(served, cfg)
        return served_probabilities(view_of(settings), ex, settings)

    try:
        result = compare(task, splits, cfg, quantization_candidates(best_dir, cfg), run)
        chosen = result["chosen"]
        if chosen is not None:
            settings = settings_of(chosen["served"], cfg)
            result["batch_invariance"] = batch_invariance(view_of(settings), splits.validation, settings)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        torch.set_num_threads(cfg.threads)  # the handler's load() sets its own thread count


def compare(
    task: Task,
    splits: Splits,
    cfg: CheckConfig,
    served_candidates: list[dict[str, Any]],
    run: Callable[[Examples, dict[str, Any]], np.ndarray],
) -> dict[str, Any]:
    val = splits.validation
    fp32_preds = run(val, FP32).argmax(axis=1).tolist()
    fp32 = {"validation": compute_metrics(val.labels, fp32_preds)}
    candidates: list[dict[str, Any]] = []
    chosen_probs: np.ndarray | None = None
    for proposed in served_candidates:
        report_only = proposed.get("report_only", False)
        if (report_only or chosen_probs is not None) and not cfg.study:
            continue  # the first setting within the bound is served: the slower ones need not be scored
        served = {k: v for k, v in proposed.items() if k != "report_only"}
        probs = run(val, served)
        preds = probs.argmax(axis=1).tolist()
        metrics = compute_metrics(val.labels, preds)
        drop = fp32["validation"][task.metric] - metrics[task.metric]
        flips = sum(a != b for a, b in zip(preds, fp32_preds, strict=True)) / max(1, len(preds))
        eligible = not report_only
        candidates.append({"served": served, "validation": metrics, "drop": drop, "flips": flips, "eligible": eligible})
        if chosen_probs is None and eligible and drop <= cfg.metric_drop:
            chosen_probs = probs
        log.info(
            "%s %s %s %s keep_fp32=%d: %s (drop %.4f, %.1f%% labels differ from fp32)",
            served["engine"],
            "int8" if served["quantize"] else "fp32",
            served.get("activations", "dynamic") if served["quantize"] else "",
            served["quantization"],
            len(served["keep_fp32"]),
            report.fmt(metrics),
            drop,
            100 * flips,
        )
    chosen = next((c for c in candidates if c["eligible"] and c["drop"] <= cfg.metric_drop), None)
    result: dict[str, Any] = {"metric": task.metric, "max_drop": cfg.metric_drop, "batch_size": SERVED_BATCH}
    result |= {"fp32": fp32, "candidates": candidates, "chosen": chosen}
    if chosen is None or chosen_probs is None:
        return result
    test_probs = None
    if splits.test is not None:
        fp32["test"] = compute_metrics(splits.test.labels, run(splits.test, FP32).argmax(axis=1).tolist())
        test_probs = run(splits.test, chosen["served"])
        chosen["test"] = compute_metrics(splits.test.labels, test_probs.argmax(axis=1).tolist())
    result["calibration"] = temperature_study(chosen_probs, val.labels, test_probs, splits.test)
    return result


def temperature_study(
    val_probs: np.ndarray, val_labels: list[int], test_probs: np.ndarray | None, test: Examples | None
) -> dict[str, Any]:
    """ECE before and after one temperature fitted on validation; the temperature is kept only if it lowers the
    validation ECE. Reliability-diagram points for the plot."""
    temperature = calibration.fit_temperature(val_probs, val_labels)
    splits = {"validation": (val_probs, val_labels)}
    if test_probs is not None and test is not None:
        splits["test"] = (test_probs, test.labels)
    study: dict[str, Any] = {"fitted_temperature": temperature, "ece": {}, "nll": {}, "reliability": {}}
    for name, (probs, labels) in splits.items():
        scaled = calibration.rescale(probs, temperature)
        study["ece"][name] = {
            "before": calibration.expected_calibration_error(probs, labels),
            "after": calibration.expected_calibration_error(scaled, labels),
        }
        study["nll"][name] = {"before": calibration.nll(probs, labels), "after": calibration.nll(scaled, labels)}
        study["reliability"][f"{name}, T=1"] = calibration.reliability_points(probs, labels)
        study["reliability"][f"{name}, T={temperature:g}"] = calibration.reliability_points(scaled, labels)
    kept = study["ece"]["validation"]["after"] < study["ece"]["validation"]["before"]
    study["temperature"] = temperature if kept else 1.0
    log.info(
        "calibration: T=%.3f fitted on validation, ECE %.4f -> %.4f (%s)",
        temperature,
        study["ece"]["validation"]["before"],
        study["ece"]["validation"]["after"],
        "kept" if kept else "not kept: it does not help",
    )
    return study


def batch_invariance(model_dir: Path, ex: Examples, settings: Settings) -> dict[str, Any]:
    """The largest change of any probability between a text sent alone and the same text in one batch with up to
    :data:`INVARIANCE_TEXTS` - 1 others of every length (the validation texts, shortest to longest)."""
    loaded = load(model_dir, settings=settings)
    step = max(1, len(ex) // INVARIANCE_TEXTS)
    texts = sorted(ex.texts[::step][:INVARIANCE_TEXTS], key=len)
    together = predict(loaded, texts, max_length=settings.max_length)
    alone = torch.cat([predict(loaded, [t], max_length=settings.max_length) for t in texts])
    delta = float((together - alone).abs().max())
    log.info("batch invariance: max |p(alone) - p(in a batch of %d)| = %.2e", len(texts), delta)
    return {"texts": len(texts), "max_abs_delta": delta}
