"""``workers.json``: what TorchServe's workers are doing, per model version, as the launcher sees it through the
management API (which the gateway has no key for in compose). The launcher rewrites it every few seconds beside the
key file the gateway reads (``<dir of the key file>/workers.json``); the gateway exports it in ``/metrics`` and the
publish CLI shows it in ``list``. A worker crash loop shows as restarts that keep growing.

``{"updated": 1765000000.0, "versions": [{"model": "cola", "version": "1.0", "default": true,
"statuses": {"READY": 2}, "restarts": 0}], "problems": [], "applied": "5f0c..."}``: ``restarts`` counts the times a
worker of that version came back as another process since the launcher started watching; ``problems`` are the
launcher's last pass over the store's state (stack/reconcile.py), one line each: a version that failed to start, an
invalid state file; ``applied`` the digest of the state file that pass applied. The file is also the replica's report
for ``publish``, which reads every replica's to wait until all serve the state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torchserve_protocol.json_files import write_atomically

WORKERS_FILE = "workers.json"


@dataclass(frozen=True)
class VersionWorkers:
    model: str
    version: str
    default: bool
    statuses: dict[str, int]  # worker status (READY, STARTING, UNLOADING, ...) -> how many
    restarts: int


def workers_file_beside(key_file: Path) -> Path:
    return key_file.parent / WORKERS_FILE


@dataclass(frozen=True)
class Report:
    updated: float  # time.time() of the launcher's last look
    versions: list[VersionWorkers]
    problems: list[str]
    applied: str | None  # the digest of the served.json the last pass applied (store.read_state_version)


def write_workers(
    path: Path,
    versions: list[VersionWorkers],
    *,
    updated: float,
    problems: Sequence[str] = (),
    applied: str | None = None,
) -> None:
    rows = [
        {"model": v.model, "version": v.version, "default": v.default, "statuses": v.statuses, "restarts": v.restarts}
        for v in versions
    ]
    write_atomically(path, {"updated": updated, "versions": rows, "problems": list(problems), "applied": applied})


def read_report(path: Path) -> Report | None:
    """The whole report; ``None`` when the file is missing or not what :func:`write_workers` writes."""
    try:
        data = json.loads(path.read_text())
        versions = [
            VersionWorkers(
                model=str(row["model"]),
                version=str(row["version"]),
                default=bool(row["default"]),
                statuses={str(k): int(n) for k, n in row["statuses"].items()},
                restarts=int(row["restarts"]),
            )
            for row in data["versions"]
        ]
        applied = data.get("applied")
        problems = [str(p) for p in data.get("problems", [])]
        return Report(float(data["updated"]), versions, problems, None if applied is None else str(applied))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_workers(path: Path) -> tuple[float, list[VersionWorkers]] | None:
    """``(updated, versions)``; ``None`` when the file is missing or not what :func:`write_workers` writes."""
    report = read_report(path)
    return None if report is None else (report.updated, report.versions)
