"""Expected calibration error and temperature scaling on data with a known answer."""

from __future__ import annotations

import numpy as np

from training.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_points,
    rescale,
    temperature_study,
)


def sampled(logits: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Labels drawn from softmax(logits): probabilities that are calibrated by construction."""
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return [int(rng.choice(len(p), p=p)) for p in probs]


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_calibrated_probabilities_have_a_small_ece_and_overconfident_ones_do_not() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(20_000, 3))
    labels = sampled(logits, rng)
    assert expected_calibration_error(softmax(logits), labels) < 0.02
    assert expected_calibration_error(softmax(logits * 3), labels) > 0.1


def test_the_fitted_temperature_undoes_a_known_overconfidence() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(20_000, 2))
    labels = sampled(logits, rng)
    overconfident = softmax(logits * 2.5)  # as if the model's logits were 2.5x too large
    temperature = fit_temperature(overconfident, labels)
    assert abs(temperature - 2.5) < 0.15
    fixed = rescale(overconfident, temperature)
    assert nll(fixed, labels) < nll(overconfident, labels)
    assert expected_calibration_error(fixed, labels) < expected_calibration_error(overconfident, labels) / 3
    assert (fixed.argmax(axis=1) == overconfident.argmax(axis=1)).all(), "a temperature never changes the label"


def test_reliability_points_count_every_answer_once() -> None:
    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(0, 1, size=(500, 3)))
    points = reliability_points(probs, [0] * 500)
    assert sum(p["count"] for p in points) == 500
    assert all(0 <= p["accuracy"] <= 1 and 1 / 3 <= p["confidence"] <= 1 for p in points)


def test_the_temperature_is_served_only_where_it_lowers_the_validation_ece() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, size=(5_000, 2))
    labels = sampled(logits, rng)
    overconfident = temperature_study(softmax(logits * 2.5), labels, softmax(logits[:500] * 2.5), labels[:500])
    assert overconfident.temperature == overconfident.fitted_temperature > 2
    assert set(overconfident.ece) == set(overconfident.nll) == {"validation", "test"}
    assert len(overconfident.reliability) == 4
    calibrated = temperature_study(softmax(logits), labels)
    assert set(calibrated.ece) == {"validation"}
    helps = calibrated.ece["validation"]["after"] < calibrated.ece["validation"]["before"]
    assert calibrated.temperature == (calibrated.fitted_temperature if helps else 1.0)
