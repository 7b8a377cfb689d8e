"""The gateway's own Prometheus metrics: request counts and a latency histogram per method, route and status (the
per-version families live in :mod:`gateway.model_metrics`).

A small hand-written registry (two metric families need no dependency), owned by one app instance, plus a pure
ASGI middleware that feeds it. Routes are labelled by their template (``/predict``), unmatched paths as
``<unmatched>``, so a client cannot grow the label set. Each uvicorn worker process has its own registry.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.model_metrics import ModelMetrics

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, str, str]  # method, route, status
# Why an inference request was sent again: TorchServe answered "Worker died", the connection broke mid-request, or
# no answer came within attempt_timeout_s (a request lost with its worker).
RETRY_REASONS = ("worker_died", "connection_broken", "no_answer")


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


class Metrics:
    """``gateway_requests_total``, ``gateway_request_duration_seconds`` and ``gateway_upstream_retries_total``, plus
    the per-model, per-version families of :class:`~gateway.model_metrics.ModelMetrics` (``models``)."""

    def __init__(self) -> None:
        self._histograms: dict[Labels, _Histogram] = defaultdict(_Histogram)
        self.retries: Counter[str] = Counter()
        self.models = ModelMetrics()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self._histograms[(method, route, str(status))].observe(seconds)

    def retried(self, reason: str) -> None:
        """One inference request sent to TorchServe a second time (``reason``: why the first attempt was lost)."""
        self.retries[reason] += 1

    def render(self) -> str:
        lines = [
            "# HELP gateway_requests_total HTTP requests answered by the gateway.",
            "# TYPE gateway_requests_total counter",
        ]
        items = sorted(self._histograms.items())
        for labels, hist in items:
            lines.append(f"gateway_requests_total{{{_labels(labels)}}} {sum(hist.counts)}")
        lines += [
            "# HELP gateway_request_duration_seconds Time from request start to the end of the response.",
            "# TYPE gateway_request_duration_seconds histogram",
        ]
        for labels, hist in items:
            base = _labels(labels)
            cumulative = 0
            for bound, count in zip((*BUCKETS, float("inf")), hist.counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'gateway_request_duration_seconds_bucket{{{base},le="{le}"}} {cumulative}')
            lines.append(f"gateway_request_duration_seconds_sum{{{base}}} {hist.total:.6f}")
            lines.append(f"gateway_request_duration_seconds_count{{{base}}} {cumulative}")
        lines += [
            "# HELP gateway_upstream_retries_total Inference requests sent to TorchServe a second time, by reason.",
            "# TYPE gateway_upstream_retries_total counter",
        ]
        for reason in RETRY_REASONS:
            lines.append(f'gateway_upstream_retries_total{{reason="{reason}"}} {self.retries[reason]}')
        lines += self.models.render()
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    method, route, status = (value.replace("\\", "\\\\").replace('"', '\\"') for value in labels)
    return f'method="{method}",route="{route}",status="{status}"'


class MetricsMiddleware:
    """Times every HTTP request and records it once the response is complete (500 if the app raised)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.observe(method, template, status, time.perf_counter() - started)
