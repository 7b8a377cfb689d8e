"""The gateway's own Prometheus metrics: request counts and a latency histogram per method, route and status (the
per-version families live in :mod:`gateway.model_metrics`).

Plain counters owned by one app instance, fed by :class:`gateway.middleware.GatewayMiddleware`; prometheus-client
writes the exposition (:meth:`Metrics.collect`). Routes are labelled by their template (``/predict``), unmatched
paths as ``<unmatched>``, so a client cannot grow the label set. Each uvicorn worker process has its own registry.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from starlette.types import Scope

from gateway.model_metrics import Histogram, ModelMetrics, counter, histogram
from gateway.shadow_metrics import ShadowMetrics
from gateway.worker_metrics import Reading, families

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, str, str]  # method, route, status
# Why an inference request was sent again: TorchServe answered "Worker died", the connection broke mid-request, or
# no answer came within attempt_timeout_s (a request lost with its worker).
RETRY_REASONS = ("worker_died", "connection_broken", "no_answer")


class Metrics:
    """``gateway_requests_total``, ``gateway_request_duration_seconds`` and ``gateway_upstream_retries_total``, plus
    the per-model, per-version families of :class:`~gateway.model_metrics.ModelMetrics` (``models``) and the shadow's
    of :class:`~gateway.shadow_metrics.ShadowMetrics` (``shadow``)."""

    def __init__(self) -> None:
        self._histograms: dict[Labels, Histogram] = defaultdict(lambda: Histogram(BUCKETS))
        self.retries: Counter[str] = Counter()
        self.models = ModelMetrics()
        self.shadow = ShadowMetrics()
        self.workers: list[Reading] = []  # each replica's workers.json, read when /metrics is asked
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def count_request(self, scope: Scope, status: int, seconds: float) -> None:
        """One HTTP request answered ``status`` after ``seconds``, labelled by its route's template."""
        route = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        self._histograms[(method, template, str(status))].observe(seconds)

    def retried(self, reason: str) -> None:
        """One inference request sent to TorchServe a second time (``reason``: why the first attempt was lost)."""
        self.retries[reason] += 1

    def collect(self) -> Iterator[Metric]:
        """The families, as prometheus-client's registry asks a collector for them."""
        labels = ("method", "route", "status")
        requests = {key: sum(hist.counts) for key, hist in self._histograms.items()}
        yield counter("gateway_requests", "HTTP requests answered by the gateway.", labels, requests)
        yield histogram("gateway_request_duration_seconds", "Time from request start to the end of the response.",
                        labels, self._histograms)  # fmt: skip
        retries = {(reason,): self.retries[reason] for reason in RETRY_REASONS}
        yield counter("gateway_upstream_retries", "Inference requests sent to TorchServe a second time, by reason.",
                      ("reason",), retries)  # fmt: skip
        yield from self.models.collect()
        yield from self.shadow.collect()
        yield from families(self.workers, now=time.time())

    def render(self) -> bytes:
        """The Prometheus text format 0.0.4 (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
