"""``GET /models``: what the model store says, read only and without any TorchServe key.

Versions are the registered ones of the store's ``served.json`` (:mod:`torchserve_protocol.store`; a store without
that file: every ``<name>-<version>.mar`` archive, the newest the default), the default, the canary and the shadow
come from the same file, and the labels and validation
metrics from two small members of each archive (``config.json``'s ``id2label``, ``metrics.json``'s
``best_validation``). An archive is read once per change of its size or modification time; at most
:data:`MAX_ARCHIVES` are listed.
"""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path
from typing import Any

from gateway.schemas import ModelInfo, ModelsResponse, VersionInfo
from torchserve_protocol.archives import ARCHIVE_RE, version_key
from torchserve_protocol.store import State, StateFileError, read_state

MAX_ARCHIVES = 256
MAX_MEMBER_BYTES = 1_048_576


def _member(archive: zipfile.ZipFile, name: str) -> Any:
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > MAX_MEMBER_BYTES:
        return None
    try:
        return json.loads(archive.read(info))
    except ValueError:
        return None


def describe_archive(path: Path, version: str) -> VersionInfo:
    labels: list[str] | None = None
    validation: dict[str, float] | None = None
    try:
        with zipfile.ZipFile(path) as archive:
            config, metrics = _member(archive, "config.json"), _member(archive, "metrics.json")
    except (OSError, zipfile.BadZipFile):
        return VersionInfo(version=version, labels=None, validation=None)
    id2label = config.get("id2label") if isinstance(config, dict) else None
    if isinstance(id2label, dict):
        try:
            labels = [str(id2label[key]) for key in sorted(id2label, key=int)]
        except ValueError:
            labels = None
    best = metrics.get("best_validation") if isinstance(metrics, dict) else None
    if isinstance(best, dict):
        validation = {str(k): float(v) for k, v in best.items() if isinstance(v, int | float)}
    return VersionInfo(version=version, labels=labels, validation=validation)


class Catalogue:
    def __init__(self, store: Path) -> None:
        self.store = store
        self._cache: dict[Path, tuple[tuple[int, int], VersionInfo]] = {}
        self._lock = threading.Lock()

    def _version(self, path: Path, version: str) -> VersionInfo:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, describe_archive(path, version))
            self._cache[path] = cached
        return cached[1]

    def _state(self) -> State | None:
        try:
            return read_state(self.store)
        except (OSError, StateFileError):
            return None

    def read(self) -> ModelsResponse:
        """The catalogue now (file reads: call it in a thread). ``OSError`` when the store cannot be listed."""
        with self._lock:
            return self._read()

    def _read(self) -> ModelsResponse:
        found: dict[str, dict[str, Path]] = {}
        for path in sorted(self.store.iterdir())[: MAX_ARCHIVES * 4]:
            match = ARCHIVE_RE.match(path.name)
            if match and sum(len(v) for v in found.values()) < MAX_ARCHIVES:
                found.setdefault(match["name"], {})[match["version"]] = path
        self._cache = {p: v for p, v in self._cache.items() if any(p in d.values() for d in found.values())}
        state = self._state()
        models = []
        for name, archives in sorted(found.items()):
            served = state.models.get(name) if state is not None else None
            if state is not None and served is None:
                continue  # inert archives: not registered, not served
            versions = sorted(v for v in archives if served is None or v in served.versions)
            versions.sort(key=version_key)
            canary = served.canary if served is not None else None
            shadow = served.shadow if served is not None else None
            models.append(
                ModelInfo(
                    name=name,
                    default=served.default if served is not None else versions[-1],
                    canary=canary.version if canary else None,
                    canary_percent=canary.percent if canary else 0.0,
                    shadow=shadow.version if shadow else None,
                    shadow_percent=shadow.percent if shadow else 0.0,
                    versions=[self._version(archives[v], v) for v in versions],
                )
            )
        return ModelsResponse(models=models)
