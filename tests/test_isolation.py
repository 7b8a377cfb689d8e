"""The suite runs the same whatever the shell that started it exports, and in any order (pytest-randomly)."""

from __future__ import annotations

from gateway.settings import Settings
from tests.conftest import free_ports, inherited_settings


def test_no_inherited_setting_reaches_a_test() -> None:
    """A developer's ``GATEWAY_*``/``TS_*`` (or launcher and publish CLI) variables are removed for the session."""
    assert inherited_settings() == []
    assert Settings() == Settings.model_validate({})


def test_free_ports_are_distinct() -> None:
    ports = free_ports()
    assert len(set(ports.__dict__.values())) == 5
