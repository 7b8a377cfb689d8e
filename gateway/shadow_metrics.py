"""The shadow's Prometheus metrics (:mod:`gateway.shadow`): what was copied, what was dropped and why, and how the
shadow's answers compare with the answers the clients got.

All labelled ``{model, version, shadow}``: ``version`` is the version that answered the client (``X-Model-Version``
from TorchServe: the default, or the canary for its share), ``shadow`` the shadow version of the store's state.

* ``gateway_shadow_copies_total``: copies sent to the shadow version;
* ``gateway_shadow_dropped_total{reason}``: copies dropped: ``busy`` (never sent: ``shadow_max_in_flight`` copies
  were in flight), ``timeout`` (no answer within ``shadow_timeout_s``), ``error`` (the shadow answered an error or
  something unreadable, or was not reachable);
* ``gateway_shadow_compared_total`` and ``gateway_shadow_agreed_total``: texts compared (every text of every copy
  answered), and those whose top label was the client's; their ratio is the agreement;
* ``gateway_shadow_delta_p``: histogram of ``|p_shadow(label) - p_client(label)|`` per text, ``label`` being the
  client's answer's top label (a label missing from the shadow's answer counts as probability 0).

``gateway_shadow_in_flight`` (a gauge) is the copies sent and not yet compared or dropped:
``copies = compared copies + dropped (timeout, error) + in flight``; a ``busy`` drop was never sent.
Cardinality: the models are configured names and the versions those of the store's state; at most
:data:`~gateway.model_metrics.MAX_VERSIONS` pairs are kept, the rest counted under ``other``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from gateway.answers import Classification
from gateway.model_metrics import MAX_VERSIONS, OTHER, Histogram, counter, histogram

DROP_REASONS = ("busy", "timeout", "error")
# |delta p| from "the same" (float noise, int8 vs fp32 of one model: < 0.01) to "a different answer" (> 0.5).
DELTA_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)

Pair = tuple[str, str, str]  # model, version that answered the client, shadow version


class ShadowMetrics:
    def __init__(self) -> None:
        self.copies: Counter[Pair] = Counter()
        self.dropped: Counter[tuple[str, str, str, str]] = Counter()
        self.compared: Counter[Pair] = Counter()
        self.agreed: Counter[Pair] = Counter()
        self.delta: dict[Pair, Histogram] = {}
        self.in_flight = 0  # kept by :class:`gateway.shadow.Shadow`

    def pair(self, model: str, version: str, shadow: str) -> Pair:
        """The labels of one copy: the pair itself, or ``other`` versions once :data:`MAX_VERSIONS` pairs are known."""
        if (model, version, shadow) in self.delta or len(self.delta) < MAX_VERSIONS:
            self.delta.setdefault((model, version, shadow), Histogram(DELTA_BUCKETS))
            return model, version, shadow
        return model, OTHER, OTHER

    def sent(self, pair: Pair) -> None:
        self.copies[pair] += 1

    def drop(self, pair: Pair, reason: str) -> None:
        self.dropped[(*pair, reason)] += 1

    def compare(self, pair: Pair, answered: Sequence[Classification], shadowed: Sequence[Classification]) -> None:
        """Text by text: the client's answers against the shadow's (the same texts, in order)."""
        delta = self.delta.setdefault(pair, Histogram(DELTA_BUCKETS))
        for client, shadow in zip(answered, shadowed, strict=True):
            self.compared[pair] += 1
            self.agreed[pair] += client.label == shadow.label
            label = client.label
            delta.observe(abs(shadow.probabilities.get(label, 0.0) - client.probabilities.get(label, 0.0)))

    def collect(self) -> list[Metric]:
        pair = ("model", "version", "shadow")
        # every known pair in every family, zeros included: a rate() over a series that does not exist yet is empty
        known = list(self.delta)
        copies, compared, agreed = ({key: c[key] for key in known} for c in (self.copies, self.compared, self.agreed))
        dropped = {(*key, reason): self.dropped[(*key, reason)] for key in known for reason in DROP_REASONS}
        return [
            counter("gateway_shadow_copies", "Copies of unpinned requests sent to the shadow version.", pair, copies),
            counter("gateway_shadow_dropped", "Shadow copies dropped, by reason (busy: never sent).",
                    (*pair, "reason"), dropped),
            counter("gateway_shadow_compared", "Texts whose shadow answer was compared with the client's.", pair,
                    compared),
            counter("gateway_shadow_agreed", "Compared texts whose shadow top label was the client's.", pair,
                    agreed),
            histogram("gateway_shadow_delta_p", "|shadow - client| probability of the client's top label, per text.",
                      pair, self.delta),
            GaugeMetricFamily("gateway_shadow_in_flight", "Shadow copies sent and not yet compared or dropped.",
                              value=self.in_flight),
        ]  # fmt: skip
