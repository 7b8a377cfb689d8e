"""The store's state file as the launcher and the publish CLI use it (the format: :mod:`torchserve_protocol.store`):
written once when a store has none, refused whole when it does not parse, changed under a lock.

The first start on a store without ``served.json`` (a first training run, or a store from before the file existed)
writes one that serves each model's default only: ``defaults.json``'s choice when an older store has one, else the
newest archive. Every other archive stays inert until ``publish register`` adds it.
"""

from __future__ import annotations

import fcntl
import os
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from torchserve_protocol.archives import archive_name, archives_in
from torchserve_protocol.store import (
    STATE_FILE,
    ModelState,
    State,
    StateFileError,
    VersionState,
    initial_state,
    legacy_default,
    read_state_version,
    write_state,
)


class StateError(RuntimeError):
    """The store's state cannot be used as it is; the message is the one line the user sees."""


def archive_workers(path: Path) -> int:
    """The workers TorchServe starts for an archive: its ``model-config.yaml``'s ``minWorkers`` (1 without one)."""
    with zipfile.ZipFile(path) as mar:
        try:
            config = yaml.safe_load(mar.read("model-config.yaml")) or {}
        except KeyError:
            return 1
    return int(config.get("minWorkers", 1))


def load(store: Path) -> State | None:
    """The store's state (``None``: no file yet); :class:`StateError` (one line) when it is invalid or unreadable."""
    found = load_version(store)
    return None if found is None else found[0]


def load_version(store: Path) -> tuple[State, str] | None:
    """The state and the digest of its file (what a replica reports having applied)."""
    try:
        return read_state_version(store)
    except StateFileError as exc:
        raise StateError(f"{exc}; nothing is served by guess: fix the file, or remove it to serve each model's "
                         "default only") from None  # fmt: skip
    except OSError as exc:
        raise StateError(f"cannot read {store / STATE_FILE} ({exc.strerror}; running as uid {os.getuid()})") from None


def save(store: Path, state: State) -> None:
    try:
        write_state(store, state)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StateError(f"cannot write {store / STATE_FILE} ({reason}; running as uid {os.getuid()}): nothing was "
                         "changed; make the model store writable for this user") from None  # fmt: skip


@contextmanager
def locked(store: Path) -> Iterator[None]:
    """One writer at a time: two publish commands that read, change and write the state would lose one change."""
    try:
        handle = (store / f".{STATE_FILE}.lock").open("a")
    except OSError as exc:
        raise StateError(f"cannot lock {store / STATE_FILE} ({exc.strerror}; running as uid {os.getuid()}): nothing "
                         "was changed; make the model store writable for this user") from None  # fmt: skip
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure(store: Path, models: Sequence[str]) -> State:
    """The state to serve. A store without a state file gets one (the defaults only, said in one line); each of
    ``models`` (the default tasks) that has archives but no entry gets its newest. Every version the state names
    must have its archive in the store."""
    with locked(store):
        state = load(store)
        archives = archives_in(store)
        versions: dict[str, list[str]] = {}
        for archive in archives:
            versions.setdefault(archive.name, []).append(archive.version)
        if state is None:  # a first run or an older store: every model, its default only
            missing = versions
        else:  # a default task the state lacks (its archives were removed, and it was trained again)
            missing = {name: found for name, found in versions.items() if name in models and name not in state.models}
        if missing:
            chosen = {name: legacy_default(store, name, found) for name, found in missing.items()}
            added = initial_state(
                {name: (v, archive_workers(store / archive_name(name, v))) for name, v in chosen.items()}
            )
            state = State(models={**(state.models if state else {}), **added.models})
            save(store, state)
            listed = ", ".join(f"{name} {version}" for name, version in sorted(chosen.items()))
            others = len(archives) - len(chosen)
            print(f"[stack] {store / STATE_FILE} now records what is served: {listed} (the defaults only; "
                  f"{others} other archive(s) stay unregistered until `publish register`)", flush=True)  # fmt: skip
    if state is None:
        raise StateError(f"{store} has no archive to serve")
    for name, model in state.models.items():
        for version in model.versions:
            if not (store / archive_name(name, version)).is_file():
                raise StateError(f"{store / STATE_FILE} serves {name} {version} but the store has no "
                                 f"{archive_name(name, version)}: put it back, or `publish unregister` it")  # fmt: skip
    return state


def with_version(state: State, name: str, version: str, workers: int) -> State:
    """``state`` with ``version`` registered (the model's first version becomes its default)."""
    model = state.models.get(name)
    if model is None:
        return state.with_model(name, ModelState(default=version, versions={version: VersionState(workers)}))
    return state.with_model(name, model.with_changes(versions={**model.versions, version: VersionState(workers)}))
