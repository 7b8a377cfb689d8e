"""Every gateway setting does something: each field of the settings class is read by the gateway's code (a documented
setting that nothing reads, as GATEWAY_WRITE_TIMEOUT_S once was, fails here)."""

from __future__ import annotations

import ast

from gateway.settings import Settings
from torchserve_protocol.layout import REPO


def attributes_read(module: ast.Module) -> set[str]:
    return {node.attr for node in ast.walk(module) if isinstance(node, ast.Attribute)}


def test_every_settings_field_is_read_by_the_gateway() -> None:
    read: set[str] = set()
    for path in sorted((REPO / "gateway").glob("*.py")):
        if path.name != "settings.py":  # the class's own validators do not count as a use
            read |= attributes_read(ast.parse(path.read_text()))
    unread = sorted(set(Settings.model_fields) - read)
    assert unread == [], f"settings no gateway code reads: {unread}"


def test_the_scan_sees_a_field_that_is_read() -> None:
    assert "read_timeout_s" in attributes_read(ast.parse((REPO / "gateway" / "app.py").read_text()))
