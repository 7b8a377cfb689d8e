"""Archive names in the model store, ``<name>-<version>.mar``, and the version rule: one to three dot-separated
numbers (``1``, ``1.0``, ``1.0.2``), ordered numerically (``1.10`` after ``1.9``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_NAME = r"[A-Za-z][A-Za-z0-9_]{0,63}"
_VERSION = r"\d+(?:\.\d+){0,2}"
MODEL_NAME_PATTERN = f"^{_NAME}$"
VERSION_PATTERN = f"^{_VERSION}$"
MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
VERSION_RE = re.compile(VERSION_PATTERN)
ARCHIVE_RE = re.compile(rf"^(?P<name>{_NAME})-(?P<version>{_VERSION})\.mar$")


@dataclass(frozen=True)
class Archive:
    path: Path
    name: str
    version: str


def archive_name(name: str, version: str) -> str:
    return f"{name}-{version}.mar"


def version_key(version: str) -> tuple[int, ...]:
    """Sort key of a version: ``sorted(versions, key=version_key)`` puts the newest last."""
    return tuple(int(part) for part in version.split("."))


def parse_archive(path: Path) -> Archive | None:
    """The archive's name and version, or None for a file not named ``<name>-<version>.mar``."""
    match = ARCHIVE_RE.match(path.name)
    return Archive(path=path, name=match["name"], version=match["version"]) if match else None


def archives_in(store: Path) -> list[Archive]:
    """The store's archives, by name then version (newest last)."""
    found = [archive for path in store.glob("*.mar") if (archive := parse_archive(path))]
    return sorted(found, key=lambda a: (a.name, version_key(a.version)))


def versions_in(store: Path, name: str) -> list[str]:
    """The versions of ``name`` in the store, oldest first."""
    return [a.version for a in archives_in(store) if a.name == name]
