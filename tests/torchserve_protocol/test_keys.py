"""The key file as TorchServe writes it, its invalid-key answer, and the one refresh policy (with a clock the test
moves) and its blocking driver on a real file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from torchserve_protocol.keys import (
    POLL,
    RENEW,
    Key,
    KeyFile,
    KeyFileError,
    KeyRefresh,
    Next,
    Step,
    fresh_key,
    is_invalid_key,
    parse_expiry,
    read_entry,
)

PAST = "2000-01-01T00:00:00.123456789Z"  # Java's Instant prints nanoseconds
FUTURE = "2999-01-01T00:00:00Z"


def write_keys(path: Path, *, inference: str = "inf", management: str = "mgmt", expires: str = FUTURE) -> None:
    path.write_text(
        json.dumps(
            {
                "management": {"key": management, "expiration time": expires},
                "inference": {"key": inference, "expiration time": expires},
                "API": {"key": "api-key"},
            }
        )
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def key(value: str, *, expired: bool = False) -> Key:
    return Key(value=value, expires=parse_expiry(PAST) if expired else None)


def test_key_file_parses_torchserve_expiration_times(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    write_keys(path, inference="k", expires="2024-02-16T21:12:24.801148Z")

    found = KeyFile(path).get("inference")

    assert found.value == "k"
    assert found.expired()
    assert KeyFile(path).get("API").expires is None
    assert read_entry(path, "inference") == {"key": "k", "expiration time": "2024-02-16T21:12:24.801148Z"}


@pytest.mark.parametrize("text", [None, "", "{", "[]", '{"inference": "k"}', '{"inference": {"key": ""}}'])
def test_a_missing_or_partial_file_is_a_key_file_error(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "key_file.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(KeyFileError):
        KeyFile(path).reload("inference")


def test_the_cache_serves_until_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    write_keys(path, inference="old")
    keys = KeyFile(path)
    assert keys.get("inference").value == "old"
    write_keys(path, inference="new")
    assert keys.get("inference").value == "old"
    assert keys.reload("inference").value == "new"
    assert keys.get("inference").value == "new"


def test_torchserve_invalid_key_answer() -> None:
    body = b'{"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}'
    assert is_invalid_key(400, body)
    assert not is_invalid_key(400, b'{"type": "invalid_input"}')
    assert not is_invalid_key(503, body)


def test_another_key_in_the_file_is_used_at_once() -> None:
    refresh = KeyRefresh(rejected="old", wait_s=1.0, renew_expired=True, clock=Clock())
    assert refresh.step(key("new")) == Step(Next.USE, "new")


def test_the_same_key_is_polled_until_the_deadline_then_used() -> None:
    clock = Clock()
    refresh = KeyRefresh(rejected="old", wait_s=1.0, renew_expired=True, clock=clock)
    assert refresh.step(key("old")) == POLL
    clock.now = 1.0
    assert refresh.step(key("old")) == Step(Next.USE, "old")  # its retry answers the rejection


def test_an_expired_key_is_renewed_once() -> None:
    clock = Clock()
    refresh = KeyRefresh(rejected="old", wait_s=1.0, renew_expired=True, clock=clock)
    assert refresh.step(key("old", expired=True)) == RENEW
    assert refresh.step(key("old", expired=True)) == POLL  # not twice
    assert refresh.step(key("new")) == Step(Next.USE, "new")


def test_without_renewal_an_expired_key_is_only_polled() -> None:
    refresh = KeyRefresh(rejected="old", wait_s=1.0, renew_expired=False, clock=Clock())
    assert refresh.step(key("old", expired=True)) == POLL


def test_an_unreadable_file_is_polled_then_raises() -> None:
    clock = Clock()
    refresh = KeyRefresh(rejected=None, wait_s=1.0, renew_expired=False, clock=clock)
    error = KeyFileError("partial")
    assert refresh.step(error) == POLL
    clock.now = 2.0
    with pytest.raises(KeyFileError, match="partial"):
        refresh.step(error)


def test_the_blocking_driver_waits_for_torchserve_to_rewrite_the_file(tmp_path: Path) -> None:
    """TorchServe switches keys in memory, truncates the file, then writes it."""
    path = tmp_path / "key_file.json"
    path.write_text("")
    timer = threading.Timer(0.1, write_keys, args=(path,), kwargs={"management": "new"})
    timer.start()
    try:
        assert fresh_key(KeyFile(path), "management", rejected="old", wait_s=5.0) == "new"
    finally:
        timer.join()


def test_the_blocking_driver_renews_an_expired_key(tmp_path: Path) -> None:
    path = tmp_path / "key_file.json"
    write_keys(path, management="old", expires=PAST)
    renewals: list[str] = []

    def renew() -> None:  # what POST /token does: a new key in the file
        renewals.append("management")
        write_keys(path, management="new")

    assert fresh_key(KeyFile(path), "management", rejected="old", wait_s=1.0, renew=renew) == "new"
    assert renewals == ["management"]
