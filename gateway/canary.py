"""Which version serves an inference request: the client's pinned version, else the canary's share of the split
(the store's ``served.json``, :mod:`torchserve_protocol.store`), else TorchServe's default.

Without a client key the split is a deterministic interleave per model: of every N unpinned requests a gateway
process sends exactly ``floor(N * percent / 100)`` (within one) to the canary, spread evenly, so the share is exact
at any load and a test needs no seed. With the ``X-Client-Key`` header the choice is sticky instead: a hash of the
model and the key picks a slot in 0-9999 and the slot decides, so one client stays on one version for as long as the
percentage does not change (and moves only towards the canary when it grows).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchserve_protocol.store import BASIS_POINTS, STATE_FILE, Share, State, StateFileError, read_state

CLIENT_KEY_HEADER = "X-Client-Key"
CLIENT_KEY_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
Role = Literal["default", "canary", "pinned"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    version: str | None  # the version to ask TorchServe for; None: TorchServe's default
    role: Role


DEFAULT = Choice(version=None, role="default")


class StateWatcher:
    """The store's state as the gateway sees it (the canary and shadow shares): the file is stat-ed at most once per
    ``check_s`` and re-read only when its modification time, size or inode changed. An unreadable or invalid file
    keeps the last good state (logged once, and kept in :attr:`error`). With no store configured, or no state file,
    there is no canary and no shadow."""

    def __init__(self, store: Path | None, *, check_s: float = 1.0) -> None:
        self.path = store / STATE_FILE if store is not None else None
        self.check_s = check_s
        self.state = State()
        self.error: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")

    def current(self) -> State:
        now = time.monotonic()
        if self.path is None or now - self._checked < self.check_s:
            return self.state
        self._checked = now
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self.state, self._stamp, self.error = State(), None, None
            return self.state
        except OSError as exc:
            self.error = f"cannot stat {self.path}: {exc.strerror}"
            return self.state
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp != self._stamp:
            try:
                self.state = read_state(self.path.parent) or State()
                self._stamp, self.error = stamp, None
            except (OSError, StateFileError) as exc:
                if self.error != str(exc):
                    log.warning("keeping the last good state of the store: %s", exc)
                self.error = str(exc)
        return self.state

    def canaries(self) -> dict[str, Share]:
        return self.current().canaries()

    def shadows(self) -> dict[str, Share]:
        return self.current().shadows()


def slot_of(model: str, client_key: str) -> int:
    """A stable slot in ``[0, 10000)`` for one client of one model."""
    digest = hashlib.sha256(f"{model}\0{client_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BASIS_POINTS


class Interleave:
    """A deterministic share per model: of every N calls to :meth:`hit` for one model, exactly
    ``floor(N * basis_points / 10000)`` answer true, evenly spread. The canary split and the shadow's copies
    (:mod:`gateway.shadow`) each keep their own, so a test needs no seed."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()

    def hit(self, model: str, basis_points: int) -> bool:
        n = self._seen[model]
        self._seen[model] = n + 1
        return (n + 1) * basis_points // BASIS_POINTS > n * basis_points // BASIS_POINTS


class VersionChooser:
    def __init__(self, watcher: StateWatcher) -> None:
        self.watcher = watcher
        self._split = Interleave()  # unpinned, unkeyed requests per model while it has a canary

    def choose(self, model: str, *, pinned: str | None, client_key: str | None) -> Choice:
        if pinned is not None:
            return Choice(version=pinned, role="pinned")
        canary = self.watcher.canaries().get(model)
        if canary is None:
            return DEFAULT
        share = canary.basis_points
        hit = slot_of(model, client_key) < share if client_key is not None else self._split.hit(model, share)
        return Choice(version=canary.version, role="canary") if hit else DEFAULT
