"""The launcher's watch over TorchServe's workers: every few seconds, each registered version's worker statuses and
how many times one of its workers came back as another process (a crash loop keeps that number growing), written to
``workers.json`` (:mod:`torchserve_protocol.workers`) for the gateway's ``/metrics`` and ``publish list``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from stack.management import Management, ManagementError
from torchserve_protocol.workers import VersionWorkers, write_workers


class WorkerWatch:
    def __init__(
        self, management: Management, *outs: Path, every_s: float = 2.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.management = management
        self.outs = outs  # beside TorchServe's key file (publish list), and beside the gateway's copy in compose
        self.every_s = every_s
        self.clock = clock
        self.pids: dict[tuple[str, str, str], int] = {}  # (model, version, worker id) -> the pid seen last
        self.restarts: Counter[tuple[str, str]] = Counter()
        self._checked = -float("inf")
        self.problems: list[str] = []  # the reconciler's last pass (stack/reconcile.py), reported with the workers
        self.applied: str | None = None  # the digest of the served.json that pass applied

    def tick(self, *, force: bool = False) -> None:
        """At most every ``every_s`` (or now): read every version's workers, count restarts, rewrite the file."""
        if not force and time.monotonic() - self._checked < self.every_s:
            return
        self._checked = time.monotonic()
        try:
            versions = self.observe()
        except ManagementError:
            return  # TorchServe busy or restarting: the file keeps its last state (with its time)
        for out in self.outs:
            write_workers(out, versions, updated=self.clock(), problems=self.problems, applied=self.applied)

    def observe(self) -> list[VersionWorkers]:
        seen = []
        for model in sorted(self.management.models()):
            default = self.management.default_version(model)
            for described in self.management.versions(model):
                version = str(described["modelVersion"])
                workers = described.get("workers", [])
                for worker in workers:
                    key, pid = (model, version, str(worker.get("id"))), int(worker.get("pid") or 0)
                    if pid and self.pids.get(key, pid) != pid:
                        self.restarts[model, version] += 1
                    if pid:
                        self.pids[key] = pid
                seen.append(
                    VersionWorkers(
                        model=model,
                        version=version,
                        default=version == default,
                        statuses=dict(Counter(str(w.get("status")) for w in workers)),
                        restarts=self.restarts[model, version],
                    )
                )
        return seen
