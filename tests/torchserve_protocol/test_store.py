"""``served.json`` in a real store folder: written atomically, read back, refused whole when wrong; and the older
store's ``defaults.json``, read once for the migration."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from torchserve_protocol.store import (
    STATE_FILE,
    ModelState,
    Quality,
    Share,
    State,
    StateFileError,
    VersionState,
    initial_state,
    legacy_default,
    read_state,
    read_state_version,
    write_state,
)

FULL = State(
    models={
        "cola": ModelState(
            default="2.0",
            versions={
                "1.0": VersionState(workers=1),
                "2.0": VersionState(workers=2, quality=Quality(metric="mcc", recorded=0.585, served=0.5849)),
                "3.0": VersionState(workers=0),
            },
            history=("1.0",),
            canary=Share(version="3.0", percent=12.5),
            shadow=Share(version="1.0", percent=100.0),
        ),
        "sentiment": ModelState(default="1.0", versions={"1.0": VersionState(workers=1)}),
    }
)


def test_the_state_round_trips(tmp_path: Path) -> None:
    store = tmp_path / "store"  # created on the first write
    write_state(store, FULL)
    assert read_state(store) == FULL
    data = json.loads((store / STATE_FILE).read_text())
    assert data["format"] == 1
    assert data["models"]["sentiment"] == {"default": "1.0", "history": [], "versions": {"1.0": {"workers": 1}}}
    assert stat.S_IMODE((store / STATE_FILE).stat().st_mode) == 0o644
    assert [p.name for p in store.iterdir()] == [STATE_FILE]  # no temporary file left
    assert FULL.canaries() == {"cola": Share(version="3.0", percent=12.5)}
    assert FULL.shadows() == {"cola": Share(version="1.0", percent=100.0)}


def test_no_file_is_no_state_and_the_digest_follows_the_bytes(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None
    write_state(tmp_path, FULL)
    found = read_state_version(tmp_path)
    assert found is not None
    write_state(tmp_path, FULL.with_model("sentiment", FULL.models["sentiment"].with_changes(history=())))
    assert read_state_version(tmp_path) == found  # the same content, the same digest
    write_state(tmp_path, FULL.with_model("cola", FULL.models["cola"].with_changes(canary=None)))
    again = read_state_version(tmp_path)
    assert again is not None
    assert again[1] != found[1]


WRONG = [
    ("{not json", "Expecting property name"),
    ("[]", "expected"),
    ('{"format": 2, "models": {}}', "expected"),
    ('{"format": 1, "models": {"cola": {"default": "1.0"}}}', "cola: versions must be a non-empty object"),
    ('{"format": 1, "models": {"cola": {"default": "2.0", "versions": {"1.0": {"workers": 1}}}}}',
     "cola: default 2.0 is not one of its versions"),
    ('{"format": 1, "models": {"cola": {"default": "1.0", "versions": {"1.0": {"workers": -1}}}}}',
     "workers must be a whole number"),
    ('{"format": 1, "models": {"cola": {"default": "1.0", "versions": {"1.0": {"workers": 1}}, '
     '"canary": {"version": "1.0", "percent": 101}}}}', "canary percent must be a number from 0 to 100"),
    ('{"format": 1, "models": {"cola": {"default": "1.0", "versions": {"1.0": {"workers": 1}}, '
     '"shadow": {"version": "4.0", "percent": 1}}}}', "shadow 4.0 is not one of its versions"),
    ('{"format": 1, "models": {"bad name": {}}}', "bad entry for model"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "says"), WRONG)
def test_a_wrong_state_is_refused_whole_in_one_line(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(StateFileError) as refused:
        read_state(tmp_path)
    assert str(refused.value).startswith(f"{tmp_path / STATE_FILE} is not a valid state: ")
    assert says in str(refused.value)
    assert "\n" not in str(refused.value)


def test_an_older_stores_default_is_its_defaults_json_choice_else_the_newest(tmp_path: Path) -> None:
    versions = ["1.0", "1.5", "2.0"]
    assert legacy_default(tmp_path, "cola", versions) == "2.0"  # no defaults.json
    (tmp_path / "defaults.json").write_text('{"cola": {"default": "1.5", "history": []}, "other": "9.0"}')
    assert legacy_default(tmp_path, "cola", versions) == "1.5"
    assert legacy_default(tmp_path, "other", ["1.0"]) == "1.0"  # an archive that is gone
    (tmp_path / "defaults.json").write_text('{"cola": "1.0"}')
    assert legacy_default(tmp_path, "cola", versions) == "1.0"
    (tmp_path / "defaults.json").write_text("{not json")
    assert legacy_default(tmp_path, "cola", versions) == "2.0"


def test_an_initial_state_serves_one_version_per_model() -> None:
    assert initial_state({"cola": ("1.0", 2)}) == State(
        models={"cola": ModelState(default="1.0", versions={"1.0": VersionState(workers=2)})}
    )


def test_a_share_in_basis_points() -> None:
    assert Share(version="2.0", percent=12.34).basis_points == 1234
