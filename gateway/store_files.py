"""The model store's file layout, one fact in one place for every process that reads or writes it: archive names
(``<name>-<version>.mar``), ``defaults.json`` (written by the publish CLI, read by the launcher and the gateway's
catalogue) and the canary split file ``canary.json`` (written by ``python -m training.publish canary|promote|abort``,
read by every gateway process). Standard library only: the TorchServe and training images import it without the
gateway's dependencies.

The split file:

    {"cola": {"version": "2.0", "percent": 10.0}}

means: of the unpinned requests for ``cola``, 10% go to version 2.0 (pinned by the gateway), the rest to
TorchServe's default version. A model absent from the file has no canary. The file is replaced atomically
(temporary file in the store, then rename), so a reader sees the old split or the new one, never half a file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ARCHIVE_RE = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_]*)-(?P<version>\d+(?:\.\d+){0,2})\.mar$")
# {"cola": {"default": "2.0", "history": ["1.0"]}}: the default version chosen by the operator and the previous ones
# (for rollback); a plain {"cola": "2.0"} is accepted.
DEFAULTS_FILE = "defaults.json"
SPLIT_FILE = "canary.json"
VERSION_RE = re.compile(r"^\d+(?:\.\d+){0,2}$")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
log = logging.getLogger(__name__)
BASIS_POINTS = 10_000  # percent is kept to 0.01: 10.0% = 1000 of 10000


class SplitFileError(ValueError):
    """The file exists but is not a valid split; the message says what is wrong (one line)."""


@dataclass(frozen=True)
class Canary:
    version: str
    percent: float  # 0-100 of the model's unpinned requests

    @property
    def basis_points(self) -> int:
        return round(self.percent * BASIS_POINTS / 100)


def parse(data: object) -> dict[str, Canary]:
    """The split as ``{model: Canary}``; raises :class:`SplitFileError` for anything else."""
    if not isinstance(data, dict):
        raise SplitFileError("the split must be a JSON object {model: {version, percent}}")
    split: dict[str, Canary] = {}
    for name, entry in data.items():
        if not NAME_RE.match(str(name)) or not isinstance(entry, dict):
            raise SplitFileError(f"bad entry for model {str(name)[:64]!r}")
        version, percent = entry.get("version"), entry.get("percent")
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise SplitFileError(f"{name}: version must look like 2.0")
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise SplitFileError(f"{name}: percent must be a number from 0 to 100")
        split[str(name)] = Canary(version=version, percent=float(percent))
    return split


def read_split(store: Path) -> dict[str, Canary]:
    """The store's split (empty when there is no file); :class:`SplitFileError` or ``OSError`` when unreadable."""
    path = store / SPLIT_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        return parse(json.loads(text))
    except ValueError as exc:
        raise SplitFileError(f"{path} is not a valid split: {exc}") from None


def write_split(store: Path, split: dict[str, Canary]) -> None:
    """Replace the file atomically (``OSError`` when the store cannot be written; nothing changed then)."""
    data = {name: {"version": c.version, "percent": c.percent} for name, c in sorted(split.items())}
    fd, tmp = tempfile.mkstemp(dir=store, prefix=".canary-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, store / SPLIT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SplitWatcher:
    """The split as the gateway sees it: the file is stat-ed at most once per ``check_s`` and re-read only when its
    modification time, size or inode changed. An unreadable or invalid file keeps the last good split (logged once,
    and kept in :attr:`error`). With no store configured there is never a canary."""

    def __init__(self, store: Path | None, *, check_s: float = 1.0) -> None:
        self.path = store / SPLIT_FILE if store is not None else None
        self.check_s = check_s
        self.split: dict[str, Canary] = {}
        self.error: str | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = float("-inf")

    def current(self) -> dict[str, Canary]:
        now = time.monotonic()
        if self.path is None or now - self._checked < self.check_s:
            return self.split
        self._checked = now
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self.split, self._stamp, self.error = {}, None, None
            return self.split
        except OSError as exc:
            self.error = f"cannot stat {self.path}: {exc.strerror}"
            return self.split
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp != self._stamp:
            try:
                self.split = read_split(self.path.parent)
                self._stamp, self.error = stamp, None
            except (OSError, SplitFileError) as exc:
                if self.error != str(exc):
                    log.warning("keeping the last good canary split: %s", exc)
                self.error = str(exc)
        return self.split
