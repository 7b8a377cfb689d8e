"""A small synchronous client for TorchServe's management API (register, set default, scale, readiness).

Used by the launcher (register every archive in the store at start-up) and by the publish CLI. Every call sends
the management key read fresh from ``key_file.json`` when TorchServe rejects the cached one (keys expire, and
``POST /token`` rotates them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.store_files import ARCHIVE_RE, DEFAULTS_FILE

__all__ = ["ARCHIVE_RE", "DEFAULTS_FILE", "Management", "ManagementError", "register_store", "version_key"]


class ManagementError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Archive:
    path: Path
    name: str
    version: str


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def archives_in(store: Path) -> list[Archive]:
    """Archives named ``<name>-<version>.mar`` in the store, by name then version."""
    found = [
        Archive(path=p, name=m.group("name"), version=m.group("version"))
        for p in store.glob("*.mar")
        if (m := ARCHIVE_RE.match(p.name))
    ]
    return sorted(found, key=lambda a: (a.name, version_key(a.version)))


def chosen_defaults(store: Path) -> dict[str, str]:
    path = store / DEFAULTS_FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {str(k): str(v["default"] if isinstance(v, dict) else v) for k, v in data.items()}


def is_invalid_key(response: httpx.Response) -> bool:
    """TorchServe answers a missing, expired or rotated key with 400 InvalidKeyException (not 401)."""
    return response.status_code in (400, 401) and "InvalidKey" in response.text


def read_key(key_file: Path, kind: str, *, timeout: float = 2.0) -> str:
    """One key from ``key_file.json``; polls briefly, as TorchServe truncates and rewrites the file on rotation."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(json.loads(key_file.read_text())[kind]["key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if time.monotonic() > deadline:
                raise ManagementError(f"cannot read the {kind} key from {key_file}: {type(exc).__name__}") from None
        time.sleep(0.05)


class Management:
    """Management API calls with the management key of ``key_file``: re-read once when TorchServe rejects the
    cached key (rotated), and renewed with the API key (``POST /token``) when the file's key has expired."""

    def __init__(self, base_url: str, key_file: Path, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.key_file = key_file
        self._key: str | None = None
        self.timeout = timeout

    def _send(self, method: str, path: str, key: str, timeout: float, params: dict[str, Any]) -> httpx.Response:
        try:
            return httpx.request(
                method,
                f"{self.base_url}{path}",
                params={k: v for k, v in params.items() if v is not None},
                headers={"Authorization": f"Bearer {key}"},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise ManagementError(f"TorchServe management API at {self.base_url} unreachable: {exc}") from exc

    def request(self, method: str, path: str, *, timeout: float | None = None, **params: Any) -> httpx.Response:
        timeout = timeout or self.timeout
        if self._key is None:
            self._key = read_key(self.key_file, "management")
        response = self._send(method, path, self._key, timeout, params)
        if is_invalid_key(response):  # rotated: the file has the new key
            self._key = read_key(self.key_file, "management")
            response = self._send(method, path, self._key, timeout, params)
        if is_invalid_key(response):  # expired: ask for a new one with the API key, which never expires
            api_key = read_key(self.key_file, "API")
            self._send("POST", "/token", api_key, timeout, {"type": "management"})
            self._key = read_key(self.key_file, "management")
            response = self._send(method, path, self._key, timeout, params)
        if response.status_code >= 400:
            raise ManagementError(f"{method} {path}: {response.status_code} {_message(response)}", response.status_code)
        return response

    def models(self) -> list[str]:
        return [m["modelName"] for m in self.request("GET", "/models", limit=1000).json()["models"]]

    def versions(self, name: str) -> list[dict[str, Any]]:
        """``GET /models/<name>/all``: one description per registered version."""
        result: list[dict[str, Any]] = self.request("GET", f"/models/{name}/all").json()
        return result

    def default_version(self, name: str) -> str:
        return str(self.request("GET", f"/models/{name}").json()[0]["modelVersion"])

    def register(self, archive: str, *, workers: int | None = None, timeout: float = 300.0) -> None:
        """Register an archive from the store and wait (synchronously) until its workers have started."""
        self.request("POST", "/models", url=archive, initial_workers=workers, synchronous="true", timeout=timeout)

    def set_default(self, name: str, version: str) -> None:
        self.request("PUT", f"/models/{name}/{version}/set-default")

    def unregister(self, name: str, version: str) -> None:
        self.request("DELETE", f"/models/{name}/{version}")

    def scale(self, name: str, version: str, workers: int, *, timeout: float = 300.0) -> None:
        self.request(
            "PUT", f"/models/{name}/{version}", min_worker=workers, max_worker=workers, synchronous="true",
            timeout=timeout,
        )  # fmt: skip

    def ready(self, names: Iterable[str]) -> dict[str, bool]:
        """Per model: does every registered version have at least one READY worker?"""
        status = {}
        for name in names:
            try:
                versions = self.versions(name)
            except ManagementError:
                status[name] = False
                continue
            status[name] = bool(versions) and all(
                any(w.get("status") == "READY" for w in v.get("workers", [])) for v in versions
            )
        return status

    def wait_ready(self, names: Iterable[str], *, timeout: float = 120.0) -> None:
        names = list(names)
        deadline = time.monotonic() + timeout
        status: dict[str, bool] = {}
        while time.monotonic() < deadline:
            status = self.ready(names)
            if all(status.values()):
                return
            time.sleep(0.25)
        raise ManagementError(
            f"models not READY after {timeout:.0f}s: {sorted(n for n, ok in status.items() if not ok)}"
        )


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text[:200]


def register_store(management: Management, store: Path, *, workers: int | None = None) -> dict[str, str]:
    """Register every archive in the store not yet registered; set each model's default (the operator's choice
    recorded in ``defaults.json``, else the newest version). Returns ``{name: default_version}``."""
    archives = archives_in(store)
    registered = {name: {v["modelVersion"] for v in management.versions(name)} for name in management.models()}
    for archive in archives:
        if archive.version not in registered.get(archive.name, set()):
            management.register(archive.path.name, workers=workers)
    chosen = chosen_defaults(store)
    defaults: dict[str, str] = {}
    for name in sorted({a.name for a in archives}):
        versions = [a.version for a in archives if a.name == name]
        defaults[name] = chosen.get(name) if chosen.get(name) in versions else versions[-1]  # type: ignore[assignment]
        management.set_default(name, defaults[name])
    return defaults
