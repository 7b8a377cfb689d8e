"""docs/gateway.md's limits table is what the gateway's settings default to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.server import uvicorn_options
from gateway.settings import Settings
from stack import doc_sections, gateway_limits


def test_the_limits_table_is_the_settings_defaults() -> None:
    assert gateway_limits.drift() == [], "docs/gateway.md is stale: run `python -m stack.gateway_limits --write`"


def test_a_hand_edited_bound_is_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = tmp_path / "gateway.md"
    begin, end = doc_sections.markers(gateway_limits.SECTION)
    doc.write_text(f"# g\n\n{begin}\n{gateway_limits.render()}{end}\n")
    monkeypatch.setattr(gateway_limits, "DOC", doc)
    assert gateway_limits.drift() == []
    doc.write_text(doc.read_text().replace("16 KiB", "32 KiB", 1))
    assert gateway_limits.drift() == [
        "gateway.md: the gateway:limits section is not what gateway.settings.Settings renders"
    ]


@pytest.mark.parametrize(
    ("n", "shown"), [(16_384, "16 KiB"), (33_554_432, "32 MiB"), (1_000_000, "1,000,000 bytes"), (1_536, "1,536 bytes")]
)
def test_sizes_are_written_in_the_largest_whole_unit(n: int, shown: str) -> None:
    assert gateway_limits.size(n) == shown


def test_each_uvicorn_option_a_row_names_is_one_the_gateway_sets_from_its_setting() -> None:
    """A row naming ``({env_field}, uvicorn's `option`)`` (the bound behind the edge) names an option
    :func:`gateway.server.uvicorn_options` passes, with the value of that setting (so the table cannot claim a bound
    the server does not get)."""
    options = uvicorn_options(Settings())
    named = {
        option: field
        for row in gateway_limits.ROWS
        for field, option in re.findall(r"\{env_(\w+)\}, uvicorn's `(\w+)`", row.bound.replace("\n", " "))
    }
    assert named.keys() == {"h11_max_incomplete_event_size", "timeout_keep_alive", "limit_concurrency"}
    assert options["http"] == "h11"  # h11_max_incomplete_event_size applies to h11 only
    for option, field in named.items():
        assert options[option] == getattr(Settings(), field), option
