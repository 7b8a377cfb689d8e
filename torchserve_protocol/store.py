"""The model store's state file, ``served.json``: what is served, per model. It is the desired state of every
TorchServe replica and of every gateway, and the only record of it: the publish CLI writes it, each replica's
launcher applies it (at start and within seconds of a change: stack/reconcile.py), and each gateway reads the canary
and shadow shares from it. TorchServe itself runs without snapshots and knows none of it.

::

    {"format": 1, "models": {"cola": {
        "default": "2.0", "history": ["1.0"],             # previous defaults, newest last (rollback)
        "versions": {"1.0": {"workers": 1}, "2.0": {"workers": 1, "quality": {"metric": "mcc",
                     "recorded": 0.585, "served": 0.585}}},
        "canary": {"version": "3.0", "percent": 10.0},   # optional: 10% of the unpinned requests, pinned to 3.0
        "shadow": {"version": "3.0", "percent": 100.0}}}} # optional: copies of 100% of them, answers discarded

Every version named (default, history, canary, shadow) is one of ``versions``: the registered ones. An archive in the
store that is not among them is inert: never registered, never served. The file is replaced atomically
(:func:`~torchserve_protocol.json_files.write_atomically`); one that does not parse is refused whole
(:class:`StateFileError`), never served by guess.

Stores written before this file held ``defaults.json`` and ``canary.json``; :func:`legacy_default` reads the first
once, for the migration (the defaults only).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchserve_protocol.archives import MODEL_NAME_RE, VERSION_RE
from torchserve_protocol.json_files import write_atomically

STATE_FILE = "served.json"
FORMAT = 1
LEGACY_DEFAULTS_FILE = "defaults.json"
BASIS_POINTS = 10_000  # percent is kept to 0.01: 10.0% = 1000 of 10000


class StateFileError(ValueError):
    """``served.json`` exists but is not a valid state; the message says what is wrong (one line)."""


@dataclass(frozen=True)
class Share:
    """A version that gets ``percent`` of a model's unpinned requests: the canary's answers, or the shadow's copies."""

    version: str
    percent: float  # 0-100

    @property
    def basis_points(self) -> int:
        return round(self.percent * BASIS_POINTS / 100)


@dataclass(frozen=True)
class Quality:
    """The publish gate's measurement of one version: its metric as recorded in training, and as served."""

    metric: str
    recorded: float
    served: float


@dataclass(frozen=True)
class VersionState:
    workers: int
    quality: Quality | None = None


@dataclass(frozen=True)
class ModelState:
    default: str
    versions: Mapping[str, VersionState]
    history: tuple[str, ...] = ()  # the previous defaults, newest last
    canary: Share | None = None
    shadow: Share | None = None

    def with_changes(self, **changes: Any) -> ModelState:
        return replace(self, **changes)


@dataclass(frozen=True)
class State:
    models: Mapping[str, ModelState] = field(default_factory=dict)

    def with_model(self, name: str, model: ModelState) -> State:
        return State(models={**self.models, name: model})

    def canaries(self) -> dict[str, Share]:
        return {name: m.canary for name, m in self.models.items() if m.canary is not None}

    def shadows(self) -> dict[str, Share]:
        return {name: m.shadow for name, m in self.models.items() if m.shadow is not None}


# --- parsing and writing ---------------------------------------------------------------------------------------------


def _version(name: str, value: object, what: str) -> str:
    if not isinstance(value, str) or not VERSION_RE.match(value):
        raise StateFileError(f"{name}: {what} must be a version like 2.0, not {str(value)[:32]!r}")
    return value


def _share(name: str, value: object, what: str) -> Share | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateFileError(f"{name}: {what} must be {{version, percent}}")
    percent = value.get("percent")
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise StateFileError(f"{name}: {what} percent must be a number from 0 to 100")
    return Share(version=_version(name, value.get("version"), f"{what} version"), percent=float(percent))


def _quality(name: str, value: object) -> Quality | None:
    if value is None:
        return None
    try:
        assert isinstance(value, dict)
        return Quality(metric=str(value["metric"]), recorded=float(value["recorded"]), served=float(value["served"]))
    except (AssertionError, KeyError, TypeError, ValueError):
        raise StateFileError(f"{name}: quality must be {{metric, recorded, served}}") from None


def _versions(name: str, value: object) -> dict[str, VersionState]:
    if not isinstance(value, dict) or not value:
        raise StateFileError(f"{name}: versions must be a non-empty object {{version: {{workers}}}}")
    versions = {}
    for version, entry in value.items():
        workers = entry.get("workers") if isinstance(entry, dict) else None
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise StateFileError(f"{name} {str(version)[:32]}: workers must be a whole number >= 0")
        versions[_version(name, version, "a version")] = VersionState(workers, _quality(name, entry.get("quality")))
    return versions


def _model(name: str, entry: object) -> ModelState:
    if not MODEL_NAME_RE.match(name) or not isinstance(entry, dict):
        raise StateFileError(f"bad entry for model {name[:64]!r}")
    versions = _versions(name, entry.get("versions"))
    history = entry.get("history", [])
    if not isinstance(history, list):
        raise StateFileError(f"{name}: history must be a list of versions")
    model = ModelState(
        default=_version(name, entry.get("default"), "default"),
        versions=versions,
        history=tuple(_version(name, v, "history") for v in history),
        canary=_share(name, entry.get("canary"), "canary"),
        shadow=_share(name, entry.get("shadow"), "shadow"),
    )
    named = [("default", model.default), *(("history", v) for v in model.history)]
    named += [(what, share.version) for what, share in (("canary", model.canary), ("shadow", model.shadow)) if share]
    for what, version in named:
        if version not in versions:
            raise StateFileError(f"{name}: {what} {version} is not one of its versions ({', '.join(versions)})")
    return model


def parse_state(data: object) -> State:
    """The state in ``data`` (``json.loads`` of the file); :class:`StateFileError` for anything else."""
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("models"), dict):
        raise StateFileError(f'expected {{"format": {FORMAT}, "models": {{...}}}}')
    return State(models={str(name): _model(str(name), entry) for name, entry in data["models"].items()})


def state_data(state: State) -> dict[str, Any]:
    """The JSON form of ``state`` (what :func:`parse_state` reads)."""
    models: dict[str, Any] = {}
    for name, model in state.models.items():
        versions: dict[str, Any] = {}
        for version, entry in model.versions.items():
            versions[version] = {"workers": entry.workers}
            if entry.quality is not None:
                q = entry.quality
                versions[version]["quality"] = {"metric": q.metric, "recorded": q.recorded, "served": q.served}
        models[name] = {"default": model.default, "history": list(model.history), "versions": versions}
        for what, share in (("canary", model.canary), ("shadow", model.shadow)):
            if share is not None:
                models[name][what] = {"version": share.version, "percent": share.percent}
    return {"format": FORMAT, "models": models}


def read_state(store: Path) -> State | None:
    """The store's state; ``None`` when it has no state file. :class:`StateFileError` (one line, naming the file)
    when the file is not valid, ``OSError`` when it cannot be read."""
    found = read_state_version(store)
    return None if found is None else found[0]


def read_state_version(store: Path) -> tuple[State, str] | None:
    """The state and a digest of the file's bytes: a replica reports the digest it applied, so a waiting ``publish``
    tells a replica that applied this very file from one that only happens to look alike."""
    path = store / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return parse_state(json.loads(data)), hashlib.sha256(data).hexdigest()[:16]
    except ValueError as exc:  # StateFileError, json.JSONDecodeError and UnicodeDecodeError
        raise StateFileError(f"{path} is not a valid state: {exc}") from None


def write_state(store: Path, state: State) -> None:
    """Replace the file atomically (``OSError`` when the store cannot be written; nothing changed then)."""
    write_atomically(store / STATE_FILE, state_data(state))


# --- the stores written before served.json ---------------------------------------------------------------------------


def legacy_default(store: Path, name: str, versions: Sequence[str]) -> str:
    """The default an older store chose for ``name`` among ``versions`` (oldest first): ``defaults.json``'s choice
    when it names one of them (``{"cola": {"default": "2.0"}}`` or ``{"cola": "2.0"}``), else the newest."""
    try:
        entry = json.loads((store / LEGACY_DEFAULTS_FILE).read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        entry = None
    chosen = entry.get("default") if isinstance(entry, dict) else entry
    return chosen if isinstance(chosen, str) and chosen in versions else versions[-1]


def initial_state(defaults: Mapping[str, tuple[str, int]]) -> State:
    """A state serving one version per model: ``{name: (version, workers)}``."""
    return State(
        models={
            name: ModelState(default=version, versions={version: VersionState(workers=workers)})
            for name, (version, workers) in sorted(defaults.items())
        }
    )
