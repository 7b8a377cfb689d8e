"""The inference key alone, in a file of its own, for a gateway that must hold no other TorchServe key.

TorchServe's ``key_file.json`` holds three keys: management (register, scale, set-default), inference and API (it
makes new keys and never expires). The gateway needs only the inference key, so the TorchServe container's launcher
copies that one entry to ``INFERENCE_KEY_FILE`` (``{"inference": {"key": ..., "expiration time": ...}}``, the key
file's own format, mode 644, written atomically) on a volume the gateway mounts read-only, and keeps it current: it
renews the key with the API key (``POST /token?type=inference``) before it expires and rewrites the copy whenever
TorchServe's file changes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from torchserve_protocol.json_files import write_atomically
from torchserve_protocol.keys import KEY_POLL_S, TOKEN_PATH, KeyFileError, bearer, parse_expiry, read_entry, read_key


class InferenceKeyPublisher:
    """Copies the inference entry of ``key_file`` to ``out`` and renews it ``renew_before_s`` before expiry."""

    def __init__(
        self, key_file: Path, out: Path, management_url: str, *, renew_before_s: float = 600.0, every_s: float = 1.0
    ) -> None:
        self.key_file = key_file
        self.out = out
        self.management_url = management_url.rstrip("/")
        self.renew_before_s = renew_before_s
        self.every_s = every_s
        self._written: dict[str, Any] | None = None
        self._checked = -float("inf")

    def inference_entry(self) -> dict[str, Any]:
        return read_entry(self.key_file, "inference")

    def renew(self) -> None:
        """Ask TorchServe for a new inference key; returns once its file holds it (TorchServe switches first)."""
        old = self.inference_entry().get("key")
        api_key = read_key(self.key_file, "API").value
        response = httpx.post(
            f"{self.management_url}{TOKEN_PATH}", params={"type": "inference"}, headers=bearer(api_key), timeout=10.0
        )
        response.raise_for_status()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                if self.inference_entry().get("key") != old:
                    return
            except KeyFileError:
                pass  # TorchServe rewrites the file in place
            time.sleep(KEY_POLL_S)

    def tick(self, *, now: datetime | None = None) -> None:
        """At most every ``every_s``: renew when close to expiry, then publish the entry if it changed."""
        if time.monotonic() - self._checked < self.every_s:
            return
        self._checked = time.monotonic()
        try:
            entry = self.inference_entry()
        except KeyFileError:
            return  # being rewritten: next tick
        expiry = parse_expiry(entry.get("expiration time"))
        if expiry is not None and (expiry - (now or datetime.now(UTC))).total_seconds() < self.renew_before_s:
            try:
                self.renew()
                entry = self.inference_entry()
            except (httpx.HTTPError, KeyFileError) as exc:
                print(f"[stack] renewing the inference key failed ({exc}); retrying in {self.every_s:.0f}s", flush=True)
                return
        if entry != self._written:
            write_atomically(self.out, {"inference": entry})
            self._written = entry
