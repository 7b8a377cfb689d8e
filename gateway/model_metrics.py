"""Per-model, per-version Prometheus metrics: what each version served and what it answered.

``gateway_model_requests_total{model,version,role}``, ``gateway_model_errors_total{model,version,role,type}``,
``gateway_model_request_duration_seconds{model,version}`` (histogram), ``gateway_model_predictions_total{model,
version,label}`` (one per text answered) and ``gateway_model_confidence{model,version}`` (histogram of the top
probability of each text). ``role`` is ``default``, ``canary`` or ``pinned`` (how the gateway chose the version).

Cardinality is bounded by construction: ``model`` is a configured name, ``version`` is the ``X-Model-Version``
TorchServe answered (a failed pinned request, whose version is the client's, is labelled ``unknown``), ``label`` is
a label name of the model's own ``id2label``, ``type`` is one of the gateway's closed set of error types. On top,
at most :data:`MAX_VERSIONS` model-version pairs and :data:`MAX_LABELS` labels per pair are kept; the rest are
counted under ``other``.

Counting is plain dicts on the request path; prometheus-client writes the exposition (:meth:`ModelMetrics.collect`).
Its own metric classes cost more CPU per request than these (measured: docs/performance.md).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from gateway.answers import Classification

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
MAX_VERSIONS = 64
MAX_LABELS = 32
OTHER = "other"
UNKNOWN = "unknown"
ROLES = ("default", "canary", "pinned")
_Labels = TypeVar("_Labels", bound=tuple[str, ...])


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, ``+Inf`` last (Prometheus' ``le`` buckets)."""
        bounds = (*self.bounds, math.inf)
        return [(floatToGoString(b), n) for b, n in zip(bounds, itertools.accumulate(self.counts), strict=True)]


def counter(name: str, documentation: str, labels: tuple[str, ...], counts: Mapping[_Labels, int]) -> Metric:
    """A counter family (``name`` without ``_total``) with one sample per label tuple, in label order."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, count in sorted(counts.items()):
        family.add_metric(values, count)
    return family


def histogram(
    name: str, documentation: str, labels: tuple[str, ...], histograms: Mapping[_Labels, Histogram]
) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, hist in sorted(histograms.items()):
        family.add_metric(values, hist.buckets(), hist.total)
    return family


class ModelMetrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, str]] = Counter()
        self.errors: Counter[tuple[str, str, str, str]] = Counter()
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.predictions: Counter[tuple[str, str, str]] = Counter()
        self.confidence: dict[tuple[str, str], Histogram] = {}
        self._labels: dict[tuple[str, str], set[str]] = {}

    def _version(self, model: str, version: str) -> str:
        """``version``, or ``other`` once :data:`MAX_VERSIONS` pairs are known."""
        if (model, version) in self.latency or len(self.latency) < MAX_VERSIONS:
            return version
        return OTHER

    def _timed(self, model: str, version: str, seconds: float) -> None:
        self.latency.setdefault((model, version), Histogram(LATENCY_BUCKETS)).observe(seconds)

    def answered(self, model: str, version: str, role: str, seconds: float, items: Iterable[Classification]) -> None:
        """One request answered 200 by ``version``; ``items``: the answer for each text."""
        version = self._version(model, version)
        self.requests[(model, version, role)] += 1
        self._timed(model, version, seconds)
        known = self._labels.setdefault((model, version), set())
        confidence = self.confidence.setdefault((model, version), Histogram(CONFIDENCE_BUCKETS))
        for item in items:
            label = item.label if item.label in known or len(known) < MAX_LABELS else OTHER
            known.add(label)
            self.predictions[(model, version, label)] += 1
            if item.probabilities:
                confidence.observe(max(item.probabilities.values()))

    def failed(self, model: str, version: str | None, role: str, seconds: float, kind: str) -> None:
        """One request that ended in a gateway error of type ``kind``; ``version`` when the gateway chose it."""
        version = self._version(model, version or UNKNOWN)
        self.requests[(model, version, role)] += 1
        self.errors[(model, version, role, kind)] += 1
        self._timed(model, version, seconds)

    def collect(self) -> list[Metric]:
        pair = ("model", "version")
        return [
            counter("gateway_model_requests", "Inference requests per model, serving version and role.",
                    (*pair, "role"), self.requests),
            counter("gateway_model_errors", "Inference requests answered with an error, by error type.",
                    (*pair, "role", "type"), self.errors),
            histogram("gateway_model_request_duration_seconds", "Inference request time in the gateway, per version.",
                      pair, self.latency),
            counter("gateway_model_predictions", "Texts answered, by the label the model chose.", (*pair, "label"),
                    self.predictions),
            histogram("gateway_model_confidence", "Top probability of each text answered, per version.", pair,
                      self.confidence),
        ]  # fmt: skip
