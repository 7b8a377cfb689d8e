"""Each TorchServe replica follows the store's ``served.json`` (:mod:`torchserve_protocol.store`): the launcher applies
it before the replica counts as ready, then every second compares it with what TorchServe serves and closes the gap
(register the versions it names with their workers, scale, set each default, drain and unregister the versions it no
longer names). So one ``publish`` that rewrites the file moves every replica, and a replica that restarts or is added
by ``--scale`` converges by itself.

After each pass the replica's report, ``workers.json`` (:mod:`torchserve_protocol.workers`), is rewritten with what
TorchServe serves and the problems of the pass: ``publish`` reads the reports to wait for every replica and to name
one that has not converged. A version whose workers fail to start is not retried until the state file changes; any
other refused step is tried again on the next pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stack.management import Management, ManagementError
from stack.worker_watch import WorkerWatch
from torchserve_protocol.archives import archive_name
from torchserve_protocol.store import STATE_FILE, State, StateFileError, read_state_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One version as TorchServe serves it now."""

    workers: int  # worker processes listed, whatever their status


Observed = dict[str, tuple[str, dict[str, Served]]]  # model -> (default, {version: Served})


def observe(management: Management) -> Observed:
    observed: Observed = {}
    for name in management.models():
        versions = {
            str(v["modelVersion"]): Served(workers=len(v.get("workers", []))) for v in management.versions(name)
        }
        observed[name] = (management.default_version(name), versions)
    return observed


@dataclass(frozen=True)
class Step:
    action: str  # register | scale | set-default | unregister
    model: str
    version: str
    workers: int = 0

    def __str__(self) -> str:
        return f"{self.action} {self.model} {self.version}" + (f" ({self.workers} workers)" if self.workers else "")


def plan(state: State, observed: Observed) -> list[Step]:
    """The steps that make ``observed`` serve ``state``, in a safe order: new versions first (READY before any
    traffic), then worker counts, then defaults, and only then the versions the state no longer names."""
    register, scale, defaults, unregister = [], [], [], []
    for name, model in state.models.items():
        default, served = observed.get(name, ("", {}))
        for version, entry in model.versions.items():
            if version not in served:
                register.append(Step("register", name, version, entry.workers))
            elif served[version].workers != entry.workers:
                scale.append(Step("scale", name, version, entry.workers))
        if default != model.default:
            defaults.append(Step("set-default", name, model.default))
    for name, (default, served) in observed.items():
        wanted = state.models[name].versions if name in state.models else {}
        # a model the state drops entirely goes default last: TorchServe refuses to remove a default among others
        gone = sorted((v for v in served if v not in wanted), key=lambda v: v == default)
        unregister += [Step("unregister", name, version) for version in gone]
    return register + scale + defaults + unregister


class Reconciler:
    """Applies the store's state to one TorchServe; :meth:`tick` is one pass, :meth:`run` the loop in a thread."""

    def __init__(
        self,
        management: Management,
        store: Path,
        watch: WorkerWatch,
        *,
        every_s: float = 1.0,
        drain_s: float = 1.0,
        timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.management = management
        self.store = store
        self.watch = watch
        self.every_s = every_s
        self.drain_s = drain_s
        self.timeout = timeout
        self.clock = clock
        self.problems: list[str] = []
        self._failed: dict[Step, str] = {}  # registrations that failed for the state file as it is now (not retried)

    def read(self) -> State:
        found = read_state_version(self.store)
        if found is None:  # the launcher wrote it before starting; someone removed it since
            raise FileNotFoundError(f"{self.store / STATE_FILE} is gone")
        state, version = found
        if version != self.watch.applied:
            self._failed.clear()  # a new state: every registration gets a new chance
        self.watch.applied = version  # reported with this pass
        return state

    def tick(self) -> list[Step]:
        """One pass: read the state, apply what differs, rewrite the report. Returns the steps it applied."""
        try:
            state = self.read()
        except (OSError, StateFileError) as exc:
            self.watch.applied = None
            self._report([f"{exc}: the replica keeps serving what it serves"])
            return []
        try:
            steps = [s for s in plan(state, observe(self.management)) if s not in self._failed]
        except ManagementError as exc:
            self._report([f"TorchServe unreachable: {exc}"])
            return []
        passing: list[str] = []  # failures of this pass that the next pass tries again
        for step in steps:
            if step.action == "set-default" and any(f.model == step.model and f.version == step.version
                                                    for f in self._failed):  # fmt: skip
                continue
            try:
                self.apply(step)
            except (ManagementError, OSError) as exc:
                problem = f"{step} failed: {' '.join(str(exc).split())}"
                if step.action == "register":  # workers that cannot load would fail the same way every second
                    self._failed[step] = problem
                else:  # TorchServe 0.12 refuses some calls under load (ConcurrentModificationException): next pass
                    passing.append(problem)
                if problem not in self.problems:
                    log.warning("[stack] %s", problem)
            else:
                log.info("[stack] applied %s", step)
        self._report([*self._failed.values(), *passing])
        return steps

    def apply(self, step: Step) -> None:
        mgmt = self.management
        if step.action == "register":
            archive = archive_name(step.model, step.version)
            if not (self.store / archive).is_file():
                raise FileNotFoundError(f"no {archive} in {self.store}")
            mgmt.register(archive, workers=step.workers, timeout=self.timeout)
            if step.workers and observe_workers(mgmt, step.model, step.version) != step.workers:
                mgmt.scale(step.model, step.version, step.workers, timeout=self.timeout)  # the archive's yaml won
        elif step.action == "scale":
            mgmt.scale(step.model, step.version, step.workers, timeout=self.timeout)
        elif step.action == "set-default":
            mgmt.set_default(step.model, step.version)
        else:
            wait_drained(mgmt, step.model, step.version, quiet_s=self.drain_s, timeout=self.timeout)
            unregister_once(mgmt, step.model, step.version)

    def _report(self, problems: list[str]) -> None:
        self.problems = problems
        self.watch.problems = problems
        self.watch.tick(force=True)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive any one pass; the next one starts from what TorchServe says
                log.exception("[stack] reconcile pass failed")
            stop.wait(self.every_s)

    def start(self) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(stop,), name="reconcile", daemon=True)
        thread.start()
        return thread, stop


def described(management: Management, name: str) -> dict[str, dict[str, Any]]:
    """``{version: TorchServe's description}`` of a model's registered versions (none once the model is gone)."""
    try:
        return {str(v["modelVersion"]): v for v in management.versions(name)}
    except ManagementError as exc:
        if exc.status == 404:
            return {}
        raise


def observe_workers(management: Management, name: str, version: str) -> int:
    return len(described(management, name).get(version, {}).get("workers", []))


def wait_drained(mgmt: Management, name: str, version: str, *, quiet_s: float, timeout: float) -> None:
    """Wait until ``version`` has had no pending request for ``quiet_s`` seconds (requests that resolved the old
    default just before a switch are still queued on it); after ``timeout`` it goes anyway."""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() < deadline:
        description = described(mgmt, name).get(version)
        if description is None:
            return
        if int(description.get("jobQueueStatus", {}).get("pendingRequests", 0)) > 0:
            quiet_since = time.monotonic()
        time.sleep(0.1)


def unregister_once(mgmt: Management, name: str, version: str, *, settle_s: float = 10.0) -> None:
    """``DELETE`` the version. Under load TorchServe 0.12 sometimes answers 500 "Interrupted while cleaning
    resources" (seen in the real-size tier) while the version goes all the same: what counts is whether it is gone,
    so a 500 is followed by a look, and one more ``DELETE`` only if it is still there after ``settle_s``."""
    try:
        mgmt.unregister(name, version)
        return
    except ManagementError as exc:
        if exc.status != 500:
            raise
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        if version not in described(mgmt, name):
            return
        time.sleep(0.25)
    mgmt.unregister(name, version)
