"""Do the served probabilities mean what they say? Expected calibration error, one temperature, a reliability plot.

``prob`` (CoLA) and ``confidence`` (sentiment) are read by users as probabilities. Temperature scaling (one scalar
``T``, ``softmax(logits / T)``) is fitted on the validation split by minimising the negative log-likelihood of the
served model's own probabilities; it never changes the top label, only how sure the answer says it is. The handler
applies it (``temperature`` in the archive's handler settings).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("training")
BINS = 10
T_RANGE = (0.05, 20.0)


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], *, bins: int = BINS) -> float:
    """Top-label ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins, weighted
    by how many answers fall in each."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap += members.mean() * abs(confidence[members].mean() - correct[members].mean())
    return float(gap)


def rescale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)``: the same as the handler's ``softmax(logits / T)`` (softmax drops constants)."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: Sequence[int]) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), np.asarray(labels)], 1e-12, 1.0)).mean())


def fit_temperature(probs: np.ndarray, labels: Sequence[int]) -> float:
    """The ``T`` in :data:`T_RANGE` with the lowest validation NLL (golden-section search on log T; NLL is unimodal
    in T for a fixed set of logits)."""
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return nll(rescale(probs, math.exp(log_t)), labels)

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return round(math.exp((lo + hi) / 2), 4)


def reliability_points(probs: np.ndarray, labels: Sequence[int], *, bins: int = BINS) -> list[dict[str, float]]:
    """Per non-empty bin: mean confidence, accuracy and count (what the reliability diagram draws)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    return [
        {
            "confidence": float(confidence[which == b].mean()),
            "accuracy": float(correct[which == b].mean()),
            "count": int((which == b).sum()),
        }
        for b in range(bins)
        if (which == b).any()
    ]


@dataclass(frozen=True)
class CalibrationStudy:
    """One temperature fitted on validation, and what it does on each split (``validation``, ``test``)."""

    fitted_temperature: float
    ece: dict[str, dict[str, float]]  # split -> {"before": ..., "after": ...}
    nll: dict[str, dict[str, float]]  # split -> {"before": ..., "after": ...}
    reliability: dict[str, list[dict[str, float]]]  # "<split>, T=<t>" -> reliability_points
    temperature: float  # served: the fitted one where it lowers the validation ECE, else 1.0


def temperature_study(
    val_probs: np.ndarray,
    val_labels: Sequence[int],
    test_probs: np.ndarray | None = None,
    test_labels: Sequence[int] | None = None,
) -> CalibrationStudy:
    """ECE before and after one temperature fitted on validation; the temperature is kept only if it lowers the
    validation ECE. Reliability-diagram points for the plot."""
    temperature = fit_temperature(val_probs, val_labels)
    splits = {"validation": (val_probs, val_labels)}
    if test_probs is not None and test_labels is not None:
        splits["test"] = (test_probs, test_labels)
    ece: dict[str, dict[str, float]] = {}
    nlls: dict[str, dict[str, float]] = {}
    reliability: dict[str, list[dict[str, float]]] = {}
    for name, (probs, labels) in splits.items():
        scaled = rescale(probs, temperature)
        ece[name] = {
            "before": expected_calibration_error(probs, labels),
            "after": expected_calibration_error(scaled, labels),
        }
        nlls[name] = {"before": nll(probs, labels), "after": nll(scaled, labels)}
        reliability[f"{name}, T=1"] = reliability_points(probs, labels)
        reliability[f"{name}, T={temperature:g}"] = reliability_points(scaled, labels)
    kept = ece["validation"]["after"] < ece["validation"]["before"]
    log.info(
        "calibration: T=%.3f fitted on validation, ECE %.4f -> %.4f (%s)",
        temperature,
        ece["validation"]["before"],
        ece["validation"]["after"],
        "kept" if kept else "not kept: it does not help",
    )
    return CalibrationStudy(temperature, ece, nlls, reliability, temperature if kept else 1.0)


def write_reliability_plot(curves: dict[str, list[dict[str, float]]], title: str, path: Path) -> None:
    """``reliability.png``: accuracy against confidence per curve (e.g. validation / test, before / after T)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, points in curves.items():
        ax.plot([p["confidence"] for p in points], [p["accuracy"] for p in points], marker="o", label=name)
    ax.set_xlabel("confidence (top label's probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
