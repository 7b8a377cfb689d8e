"""The compose commands the compose and real-size tiers run (tests/compose/commands.py) are the documented ones,
verbatim: checked in `make test`, so a doc edit cannot wait for the compose tier to find out."""

from __future__ import annotations

import pytest

from tests.compose.commands import COMMANDS
from torchserve_protocol.layout import REPO


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_the_tiers_run_is_documented_verbatim(command: str) -> None:
    documented = (REPO / "README.md").read_text() + (REPO / "docs" / "deployment.md").read_text()
    assert command in documented
