"""What ``publish`` knows of the replicas: each replica's launcher rewrites its report (``workers.json``,
:mod:`torchserve_protocol.workers`) after every pass over the store's state (stack/reconcile.py), about every second.
A report older than :data:`FRESH_S` is a replica that is gone (a stopped container leaves its folder on the shared
volume) and is not waited for.

Where the reports lie: beside TorchServe's key file for a local run; in compose, beside each replica's copy of the
inference key (``INFERENCE_KEY_FILE=/run/keys/{ip}/inference_key.json``), so any replica sees every replica's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchserve_protocol.layout import IP_PLACEHOLDER
from torchserve_protocol.store import STATE_FILE, ModelState, State
from torchserve_protocol.workers import Report, read_report, workers_file_beside

FRESH_S = 10.0  # the launcher rewrites its report every second or so, and at most a registration's time apart


@dataclass(frozen=True)
class Replica:
    name: str  # its folder: the replica's address in compose
    report: Report


def report_files(key_file: Path) -> list[Path]:
    """Every replica's report: ``$INFERENCE_KEY_FILE``'s ``{ip}`` as a wildcard when set (compose), else the one
    beside ``key_file``."""
    template = os.environ.get("INFERENCE_KEY_FILE")
    if template and IP_PLACEHOLDER in template:
        pattern = workers_file_beside(Path(template.replace(IP_PLACEHOLDER, "*")))
        return sorted(Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))))
    return [workers_file_beside(key_file)]


def live_replicas(key_file: Path, *, now: Callable[[], float] = time.time) -> list[Replica]:
    replicas = []
    for path in report_files(key_file):
        report = read_report(path)
        if report is not None and now() - report.updated < FRESH_S:
            replicas.append(Replica(name=path.parent.name, report=report))
    return replicas


def lag(report: Report, name: str, model: ModelState | None) -> str | None:
    """How the replica differs from the state for one model (``None``: it serves exactly that state)."""
    rows = {v.version: v for v in report.versions if v.model == name}
    if model is None:
        return f"still serves {', '.join(sorted(rows))}" if rows else None
    for version, entry in model.versions.items():
        if version not in rows:
            return f"lacks {name} {version}"
        ready = rows[version].statuses.get("READY", 0)
        if ready != entry.workers or sum(rows[version].statuses.values()) != entry.workers:
            return f"{name} {version} has {ready} of {entry.workers} worker(s) READY"
    extra = sorted(set(rows) - set(model.versions))
    if extra:
        return f"still serves {name} {', '.join(extra)}"
    default = next((v for v, row in rows.items() if row.default), None)
    if default != model.default:
        return f"{name}'s default is {default} (wants {model.default})"
    return None


def problems_of(replicas: list[Replica], name: str, version: str | None = None) -> list[str]:
    """The replicas' problems that concern the model (or that version of it): a version that failed to start, an
    invalid state file."""
    needle = f" {name} {version} " if version else f" {name} "
    return [f"{r.name}: {p}" for r in replicas for p in r.report.problems if needle in f" {p} " or STATE_FILE in p]


class NotConverged(RuntimeError):
    """The replicas did not all serve the state in time; the message (one line) names each one that lags."""


def wait_converged(
    key_file: Path, read: Callable[[], tuple[State, str]], name: str, *, timeout: float,
    failed: Callable[[list[str]], None],
) -> list[Replica]:  # fmt: skip
    """Wait until every live replica has applied ``read()``'s state (the same file: its digest) and serves it for
    ``name``. ``failed`` sees the problems those replicas report about the model (it raises to stop the wait).
    Returns the replicas."""
    deadline = time.monotonic() + timeout
    while True:
        state, version = read()
        replicas = live_replicas(key_file)
        current = [r for r in replicas if r.report.applied == version]
        failed(problems_of(current, name))
        lagging = [(r.name, "has not applied it yet") for r in replicas if r.report.applied != version]
        lagging += [(r.name, why) for r in current if (why := lag(r.report, name, state.models.get(name)))]
        if replicas and not lagging:
            return replicas
        if time.monotonic() > deadline:
            if not replicas:
                raise NotConverged("no replica reports what it serves (the launcher writes workers.json beside its "
                                   f"key file, {key_file.parent}): is the stack running?")  # fmt: skip
            raise NotConverged("; ".join(f"replica {who} has not converged after {timeout:.0f}s: {why}"
                                         for who, why in lagging))  # fmt: skip
        time.sleep(0.25)
