"""TorchServe's ``key_file.json``, the answer to a bad key, and the one policy for getting a fresh key.

TorchServe writes ``{"management": {"key", "expiration time"}, "inference": {...}, "API": {"key"}}``. Management
and inference keys expire (``token_expiration_min``); the API key never does and makes new ones
(``POST /token?type=<kind>``). TorchServe switches to a new key in memory before it rewrites the file (a plain
truncate-and-write), so a reader can briefly see the old key or a partial file: reads raise :class:`KeyFileError`
for those and the caller polls.

When TorchServe rejects a key, every client here follows :class:`KeyRefresh`: poll the file for another key for a
short while; if the file's key has itself expired, renew it once with the API key; then retry exactly once.
:func:`fresh_key` and :func:`fresh_key_async` drive it for the synchronous management client and the gateway.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal

KeyKind = Literal["inference", "management", "API"]
KEY_KINDS: tuple[KeyKind, ...] = ("management", "inference", "API")
INVALID_KEY_TYPE = "InvalidKeyException"  # the error "type" of TorchServe's answer to a missing or stale key
TOKEN_PATH = "/token"  # POST ?type=<kind> with the API key: TorchServe makes a new key and rewrites the file
KEY_POLL_S = 0.05
_FRACTION = re.compile(r"(\.\d{6})\d+")  # Java's Instant may print nanoseconds; datetime takes microseconds


class KeyFileError(RuntimeError):
    """The key file is missing, partial or lacks the key asked for."""


@dataclass(frozen=True)
class Key:
    value: str
    expires: datetime | None  # None: never (the API key) or unknown

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(UTC)) >= self.expires


def parse_expiry(raw: object) -> datetime | None:
    """A key file's ``expiration time`` (Java's ISO instant, maybe in nanoseconds) as an aware datetime, or None."""
    if not isinstance(raw, str):
        return None
    try:
        parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", raw))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def read_entry(path: Path, kind: KeyKind) -> dict[str, Any]:
    """The raw entry of ``kind`` (``{"key": ..., "expiration time": ...}``); :class:`KeyFileError` if unreadable."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))[kind]
        if not isinstance(entry, dict):
            raise TypeError(f"the {kind} entry is not an object")
    except FileNotFoundError:
        raise KeyFileError(f"TorchServe key file {path} does not exist (is TorchServe running?)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(f"cannot read the {kind} key from {path}: {type(exc).__name__}") from None
    return entry


def read_key(path: Path, kind: KeyKind) -> Key:
    entry = read_entry(path, kind)
    key = Key(value=str(entry.get("key") or ""), expires=parse_expiry(entry.get("expiration time")))
    if not key.value:
        raise KeyFileError(f"the {kind} key in {path} is missing or empty")
    return key


class KeyFile:
    """The keys of one ``key_file.json``; :meth:`get` serves the cached key, :meth:`reload` reads the file again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, Key] = {}

    def get(self, kind: KeyKind) -> Key:
        return self._cache.get(kind) or self.reload(kind)

    def reload(self, kind: KeyKind) -> Key:
        key = read_key(self.path, kind)
        self._cache[kind] = key
        return key

    def try_reload(self, kind: KeyKind) -> Key | KeyFileError:
        try:
            return self.reload(kind)
        except KeyFileError as exc:
            return exc


def is_invalid_key(status: int, body: bytes) -> bool:
    """TorchServe answers a missing, expired or rotated key with 400 ``InvalidKeyException`` (not 401)."""
    return status in (400, 401) and INVALID_KEY_TYPE.encode() in body


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Next(Enum):
    USE = "use"  # send with Step.key
    RENEW = "renew"  # ask TorchServe for a new key (POST /token with the API key), then read the file again
    POLL = "poll"  # wait KEY_POLL_S, then read the file again


@dataclass(frozen=True)
class Step:
    next: Next
    key: str = ""


RENEW = Step(Next.RENEW)
POLL = Step(Next.POLL)


class KeyRefresh:
    """What to do with each read of the key file after TorchServe rejected ``rejected`` (or, with ``rejected=None``,
    before the first request): a key other than the rejected one is used at once; the rejected key, when the file
    says it has expired, is renewed once (``renew_expired``); an unreadable file or the same key are read again until
    ``wait_s`` has passed, then the unreadable file raises and the same key is used (its retry answers the
    rejection). Pure: the drivers below do the reading, renewing and waiting."""

    def __init__(
        self,
        *,
        rejected: str | None,
        wait_s: float,
        renew_expired: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rejected = rejected
        self.renew_expired = renew_expired
        self.clock = clock
        self.deadline = clock() + wait_s
        self.renewed = False

    def step(self, read: Key | KeyFileError) -> Step:
        past_deadline = self.clock() >= self.deadline
        if isinstance(read, KeyFileError):
            if past_deadline:
                raise read
            return POLL
        if read.value != self.rejected:
            return Step(Next.USE, read.value)
        if read.expired() and self.renew_expired and not self.renewed:
            self.renewed = True
            return RENEW
        return Step(Next.USE, read.value) if past_deadline else POLL


def fresh_key(
    keys: KeyFile, kind: KeyKind, *, rejected: str | None, wait_s: float, renew: Callable[[], object] | None = None
) -> str:
    """:class:`KeyRefresh` with blocking reads and sleeps; ``renew`` (None: never) asks TorchServe for a new key."""
    refresh = KeyRefresh(rejected=rejected, wait_s=wait_s, renew_expired=renew is not None)
    while (step := refresh.step(keys.try_reload(kind))).next is not Next.USE:
        if step.next is Next.RENEW and renew is not None:
            renew()
        else:
            time.sleep(KEY_POLL_S)
    return step.key


async def fresh_key_async(
    keys: KeyFile,
    kind: KeyKind,
    *,
    rejected: str | None,
    wait_s: float,
    renew: Callable[[], Awaitable[object]] | None = None,
) -> str:
    """:func:`fresh_key` for an event loop: the waits do not block it."""
    refresh = KeyRefresh(rejected=rejected, wait_s=wait_s, renew_expired=renew is not None)
    while (step := refresh.step(keys.try_reload(kind))).next is not Next.USE:
        if step.next is Next.RENEW and renew is not None:
            await renew()
        else:
            await asyncio.sleep(KEY_POLL_S)
    return step.key
