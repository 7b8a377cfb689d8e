"""The model store's own files, beside the archives: ``defaults.json`` (the operator's default version per model,
written by the publish CLI, read by the launcher, the benchmarks and the gateway's catalogue) and ``canary.json``
(the canary split, written by the publish CLI, read by every gateway process). TorchServe itself knows neither.

``defaults.json``: ``{"cola": {"default": "2.0", "history": ["1.0"]}}``: the default and the previous ones, newest
last (for rollback); a plain ``{"cola": "2.0"}`` is accepted.

``canary.json``: ``{"cola": {"version": "2.0", "percent": 10.0}}``: of the unpinned requests for ``cola``, 10% go to
version 2.0 (pinned by the gateway), the rest to TorchServe's default. A model absent from it has no canary.

Both are replaced atomically (:func:`~torchserve_protocol.json_files.write_atomically`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torchserve_protocol.archives import MODEL_NAME_RE, VERSION_RE
from torchserve_protocol.json_files import write_atomically

DEFAULTS_FILE = "defaults.json"
SPLIT_FILE = "canary.json"
BASIS_POINTS = 10_000  # percent is kept to 0.01: 10.0% = 1000 of 10000


# --- defaults.json ---------------------------------------------------------------------------------------------------


class DefaultsFileError(ValueError):
    """The file exists but does not hold ``{model: {"default", "history"}}`` (or ``{model: version}``)."""


@dataclass(frozen=True)
class ModelDefault:
    default: str
    history: tuple[str, ...] = ()  # the previous defaults, newest last


def parse_defaults(data: object) -> dict[str, ModelDefault]:
    if not isinstance(data, dict):
        raise DefaultsFileError("defaults must be a JSON object {model: {default, history}}")
    result: dict[str, ModelDefault] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            result[str(name)] = ModelDefault(default=str(entry))
        elif "default" not in entry or not isinstance(entry.get("history", []), list):
            raise DefaultsFileError(f"bad entry for model {str(name)[:64]!r}")
        else:
            history = tuple(str(v) for v in entry.get("history", []))
            result[str(name)] = ModelDefault(default=str(entry["default"]), history=history)
    return result


def read_defaults(store: Path) -> dict[str, ModelDefault]:
    """The store's defaults (empty when there is no file); ``OSError`` or :class:`ValueError` when unreadable."""
    path = store / DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        return parse_defaults(json.loads(path.read_text()))
    except DefaultsFileError as exc:
        raise DefaultsFileError(f"{path}: {exc}") from None


def write_defaults(store: Path, defaults: Mapping[str, ModelDefault]) -> None:
    data = {name: {"default": d.default, "history": list(d.history)} for name, d in defaults.items()}
    write_atomically(store / DEFAULTS_FILE, data)


def chosen_default(versions: Sequence[str], chosen: ModelDefault | None) -> str:
    """The version to serve by default among ``versions`` (oldest first): the operator's choice when it is one of
    them, else the newest."""
    return chosen.default if chosen is not None and chosen.default in versions else versions[-1]


# --- canary.json -----------------------------------------------------------------------------------------------------


class SplitFileError(ValueError):
    """The file exists but is not a valid split; the message says what is wrong (one line)."""


@dataclass(frozen=True)
class Canary:
    version: str
    percent: float  # 0-100 of the model's unpinned requests

    @property
    def basis_points(self) -> int:
        return round(self.percent * BASIS_POINTS / 100)


def parse_split(data: object) -> dict[str, Canary]:
    """The split as ``{model: Canary}``; raises :class:`SplitFileError` for anything else."""
    if not isinstance(data, dict):
        raise SplitFileError("the split must be a JSON object {model: {version, percent}}")
    split: dict[str, Canary] = {}
    for name, entry in data.items():
        if not MODEL_NAME_RE.match(str(name)) or not isinstance(entry, dict):
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
        return parse_split(json.loads(text))
    except ValueError as exc:
        raise SplitFileError(f"{path} is not a valid split: {exc}") from None


def write_split(store: Path, split: Mapping[str, Canary]) -> None:
    """Replace the file atomically (``OSError`` when the store cannot be written; nothing changed then)."""
    data = {name: {"version": c.version, "percent": c.percent} for name, c in split.items()}
    write_atomically(store / SPLIT_FILE, data)
