"""The Makefile's own listing: `make help` names every target."""

from __future__ import annotations

import re
import subprocess

from torchserve_protocol.layout import REPO


def test_make_help_lists_every_target() -> None:
    makefile = (REPO / "Makefile").read_text()
    rules = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    phony = set(re.search(r"^\.PHONY: (.+)$", makefile, re.MULTILINE).group(1).split())  # type: ignore[union-attr]
    listing = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    listed = {line.split()[1] for line in listing.splitlines() if line.strip().startswith("make ")}
    assert rules == phony
    assert listed == rules
