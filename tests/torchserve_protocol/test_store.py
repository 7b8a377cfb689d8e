"""``defaults.json`` and ``canary.json`` in a real store folder: written atomically, read back, refused when wrong."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from torchserve_protocol.store import (
    Canary,
    DefaultsFileError,
    ModelDefault,
    SplitFileError,
    chosen_default,
    read_defaults,
    read_split,
    write_defaults,
    write_split,
)


def test_defaults_round_trip_with_their_history(tmp_path: Path) -> None:
    store = tmp_path / "store"  # created on the first write
    defaults = {"cola": ModelDefault(default="2.0", history=("1.0",)), "sentiment": ModelDefault(default="1.0")}

    write_defaults(store, defaults)

    assert read_defaults(store) == defaults
    assert json.loads((store / "defaults.json").read_text()) == {
        "cola": {"default": "2.0", "history": ["1.0"]},
        "sentiment": {"default": "1.0", "history": []},
    }
    assert stat.S_IMODE((store / "defaults.json").stat().st_mode) == 0o644
    assert [p.name for p in store.iterdir()] == ["defaults.json"]  # no temporary file left


def test_a_plain_version_per_model_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "defaults.json").write_text('{"cola": "2.0"}')
    assert read_defaults(tmp_path) == {"cola": ModelDefault(default="2.0")}


def test_no_file_means_no_choice(tmp_path: Path) -> None:
    assert read_defaults(tmp_path) == {}


@pytest.mark.parametrize("text", ["[]", '{"cola": {"history": []}}', '{"cola": {"default": "1", "history": "1"}}'])
def test_a_wrong_defaults_file_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "defaults.json").write_text(text)
    with pytest.raises(DefaultsFileError, match=r"defaults\.json"):
        read_defaults(tmp_path)


def test_invalid_json_is_a_value_error(tmp_path: Path) -> None:
    (tmp_path / "defaults.json").write_text("{not json")
    with pytest.raises(ValueError, match="Expecting property name"):
        read_defaults(tmp_path)


def test_the_default_is_the_operators_choice_when_it_exists_else_the_newest() -> None:
    versions = ["1.0", "1.5", "2.0"]
    assert chosen_default(versions, ModelDefault(default="1.5")) == "1.5"
    assert chosen_default(versions, ModelDefault(default="9.0")) == "2.0"  # an archive that is gone
    assert chosen_default(versions, None) == "2.0"


def test_the_split_file_round_trips_and_refuses_nonsense(tmp_path: Path) -> None:
    write_split(tmp_path, {"cola": Canary(version="2.0", percent=12.5)})
    assert read_split(tmp_path) == {"cola": Canary(version="2.0", percent=12.5)}
    assert not list(tmp_path.glob(".canary-*"))
    for bad in ('{"cola": {"version": "2.0", "percent": 101}}', '{"cola": {"version": "x", "percent": 1}}', "[]"):
        (tmp_path / "canary.json").write_text(bad)
        with pytest.raises(SplitFileError):
            read_split(tmp_path)


def test_a_canary_share_in_basis_points() -> None:
    assert Canary(version="2.0", percent=12.34).basis_points == 1234
