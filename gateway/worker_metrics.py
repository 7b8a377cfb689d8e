"""TorchServe's workers in ``/metrics``, from each replica's ``workers.json`` (written by its launcher, which holds the
management key the gateway does not: :mod:`torchserve_protocol.workers`). A crash loop shows as
``gateway_torchserve_worker_restarts_total`` growing and workers missing from ``status="READY"``.

Replicas are labelled by their position in the sorted list of replicas (``"0"``, ``"1"``...), never by address:
``/metrics`` is served on the public port."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from torchserve_protocol.workers import VersionWorkers, read_workers, workers_file_beside

Reading = tuple[float, list[VersionWorkers]] | None


def read_all(key_files: Sequence[Path]) -> list[Reading]:
    """Each replica's workers file (beside its key file), in the order given; ``None`` where there is none."""
    return [read_workers(workers_file_beside(key_file)) for key_file in key_files]


def families(readings: Sequence[Reading], *, now: float) -> Iterator[Metric]:
    workers = GaugeMetricFamily(
        "gateway_torchserve_workers",
        "TorchServe workers per replica, model version and status (from the replica's launcher).",
        labels=("replica", "model", "version", "default", "status"),
    )
    restarts = CounterMetricFamily(
        "gateway_torchserve_worker_restarts",
        "Times a worker of the version came back as another process since its launcher started (a crash loop grows).",
        labels=("replica", "model", "version"),
    )
    age = GaugeMetricFamily(
        "gateway_torchserve_workers_age_seconds",
        "Seconds since the replica's launcher last wrote its workers' state.",
        labels=("replica",),
    )
    for index, reading in enumerate(readings):
        if reading is None:
            continue
        updated, versions = reading
        replica = str(index)
        age.add_metric([replica], max(now - updated, 0.0))
        for v in versions:
            for status, count in sorted(v.statuses.items()):
                workers.add_metric([replica, v.model, v.version, str(v.default).lower(), status], count)
            restarts.add_metric([replica, v.model, v.version], v.restarts)
    yield from (workers, restarts, age)
