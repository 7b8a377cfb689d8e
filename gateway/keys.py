"""TorchServe's ``key_file.json``, read once and cached; re-read when TorchServe rejects a key.

TorchServe writes ``{"management": {"key", "expiration time"}, "inference": {...}, "API": {"key"}}``. It switches
to a new key in memory before rewriting the file (a plain truncate-and-write), so a reader can briefly see the old
key or a partial file: :meth:`KeyFile.reload` raises :class:`KeyFileError` for those and the caller polls.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

KeyKind = Literal["inference", "management", "API"]
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


class KeyFile:
    """The keys of one ``key_file.json``; :meth:`get` serves the cached key, :meth:`reload` reads the file again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, Key] = {}

    def get(self, kind: KeyKind) -> Key:
        return self._cache.get(kind) or self.reload(kind)

    def reload(self, kind: KeyKind) -> Key:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entry = data[kind]
            key = Key(value=str(entry["key"]), expires=parse_expiry(entry.get("expiration time")))
        except FileNotFoundError:
            raise KeyFileError(f"TorchServe key file {self.path} does not exist (is TorchServe running?)") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyFileError(f"cannot read the {kind} key from {self.path}: {type(exc).__name__}") from None
        if not key.value:
            raise KeyFileError(f"the {kind} key in {self.path} is empty")
        self._cache[kind] = key
        return key
