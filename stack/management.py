"""A small synchronous client for TorchServe's management API (register, set default, scale, readiness).

Used by the launcher (which applies the store's served.json: stack/reconcile.py), the container healthcheck and
the publish CLI. Every call sends the management key of ``key_file.json``, refreshed when TorchServe rejects the
cached one (keys expire, and ``POST /token`` rotates them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from torchserve_protocol.keys import TOKEN_PATH, KeyFile, KeyFileError, KeyKind, bearer, fresh_key, is_invalid_key

KEY_WAIT_S = 2.0  # how long to poll a key file that is missing or being rewritten (TorchServe truncates, then writes)


class ManagementError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Management:
    """Management API calls with the management key of ``key_file``. A rejected key is refreshed as every client
    here does it (:class:`torchserve_protocol.keys.KeyRefresh`: re-read when rotated, renewed with the API key when
    the file's key has expired) and the call retried once."""

    def __init__(self, base_url: str, key_file: Path, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.keys = KeyFile(key_file)
        self._key: str | None = None
        self.timeout = timeout

    def _send(self, method: str, path: str, key: str, timeout: float, params: dict[str, Any]) -> httpx.Response:
        try:
            return httpx.request(
                method,
                f"{self.base_url}{path}",
                params={k: v for k, v in params.items() if v is not None},
                headers=bearer(key),
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise ManagementError(f"TorchServe management API at {self.base_url} unreachable: {exc}") from exc

    def _read_key(self, kind: KeyKind, *, rejected: str | None = None, renew: Callable[[], None] | None = None) -> str:
        try:
            return fresh_key(self.keys, kind, rejected=rejected, wait_s=KEY_WAIT_S, renew=renew)
        except KeyFileError as exc:
            raise ManagementError(str(exc)) from None

    def _renew(self, timeout: float) -> None:
        """``POST /token?type=management`` with the API key: TorchServe makes a new key and rewrites the file."""
        self._send("POST", TOKEN_PATH, self._read_key("API"), timeout, {"type": "management"})

    def request(self, method: str, path: str, *, timeout: float | None = None, **params: Any) -> httpx.Response:
        timeout = timeout or self.timeout
        if self._key is None:
            self._key = self._read_key("management")
        response = self._send(method, path, self._key, timeout, params)
        if is_invalid_key(response.status_code, response.content):
            self._key = self._read_key("management", rejected=self._key, renew=lambda: self._renew(timeout))
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

    def register(
        self,
        archive: str,
        *,
        workers: int | None = None,
        batch_size: int | None = None,
        max_batch_delay_ms: int | None = None,
        timeout: float = 300.0,
    ) -> None:
        """Register an archive from the store and wait (synchronously) until its workers have started.

        ``None`` leaves a setting to the archive's ``model-config.yaml``. A batch size or delay given here wins over
        the archive's in TorchServe 0.12 (``ModelManager.createModel`` reads the yaml only when the parameter is
        absent); a worker count does not (``ApiUtils.handleRegister``: the yaml's ``minWorkers``/``maxWorkers``, when
        set, win over ``initial_workers``)."""
        self.request(
            "POST", "/models", url=archive, initial_workers=workers, batch_size=batch_size,
            max_batch_delay=max_batch_delay_ms, synchronous="true", timeout=timeout,
        )  # fmt: skip

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
