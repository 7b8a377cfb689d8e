"""Archive names and the version rule, on real files in a real store folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchserve_protocol.archives import (
    VERSION_PATTERN,
    Archive,
    archive_name,
    archives_in,
    parse_archive,
    version_key,
    versions_in,
)


def test_versions_order_numerically() -> None:
    assert sorted(["1.10", "2", "1.9", "1.9.1"], key=version_key) == ["1.9", "1.9.1", "1.10", "2"]


@pytest.mark.parametrize("version", ["1", "1.0", "1.0.2", "10.20.30"])
def test_good_versions(version: str) -> None:
    assert re.match(VERSION_PATTERN, version)


@pytest.mark.parametrize("version", ["", "v1", "1.", ".1", "1.0.0.0", "1-0"])
def test_bad_versions(version: str) -> None:
    assert not re.match(VERSION_PATTERN, version)


def test_the_store_lists_well_named_archives_by_name_then_version(tmp_path: Path) -> None:
    names = ["sentiment-1.0.mar", "cola-1.10.mar", "cola-1.9.mar", "cola-2.mar", "notes.txt", "-1.0.mar", "x-1.a.mar"]
    for name in names:
        (tmp_path / name).write_bytes(b"")

    found = archives_in(tmp_path)

    assert [(a.name, a.version) for a in found] == [
        ("cola", "1.9"), ("cola", "1.10"), ("cola", "2"), ("sentiment", "1.0"),
    ]  # fmt: skip
    assert versions_in(tmp_path, "cola") == ["1.9", "1.10", "2"]
    assert versions_in(tmp_path, "absent") == []


def test_a_name_round_trips() -> None:
    path = Path("store") / archive_name("my_model2", "3.1")
    assert path.name == "my_model2-3.1.mar"
    assert parse_archive(path) == Archive(path=path, name="my_model2", version="3.1")
    assert parse_archive(Path("2model-1.0.mar")) is None  # names start with a letter
