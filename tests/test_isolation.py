"""The suite runs the same whatever the shell that started it exports, and in any order (pytest-randomly)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.settings import Settings
from tests.conftest import free_ports, inherited_settings, launch_torchserve, ports_are_free


def test_no_inherited_setting_reaches_a_test() -> None:
    """A developer's ``GATEWAY_*``/``TS_*`` (or launcher and publish CLI) variables are removed for the session."""
    assert inherited_settings() == []
    assert Settings() == Settings.model_validate({})


def test_free_ports_are_distinct() -> None:
    ports = free_ports()
    assert len(set(ports.__dict__.values())) == 5


def test_a_restart_on_a_port_taken_meanwhile_fails_clearly(tmp_path: Path) -> None:
    ports = free_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taker:
        taker.bind(("127.0.0.1", ports.metrics))
        taker.listen()
        assert not ports_are_free(ports)
        with pytest.raises(RuntimeError, match="a port was taken since the first start"):
            launch_torchserve(tmp_path / "store", tmp_path / "run", ports=ports)
    assert ports_are_free(ports)
    assert not (tmp_path / "run").exists()  # refused before anything started
