"""docs/configuration.md is what the code says: regenerated here and compared, and every environment variable the
launcher, the gateway and the publish CLI read is named in it."""

from __future__ import annotations

import re

from stack.configuration import DOC, VARIABLES, render
from torchserve_protocol.layout import REPO

READERS = [
    *sorted((REPO / "stack").glob("*.py")),
    *sorted((REPO / "gateway").glob("*.py")),
    *sorted((REPO / "torchserve_protocol").glob("*.py")),
]
READ = re.compile(r"""environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""")


def variables_read() -> set[str]:
    return {name for path in READERS for name in READ.findall(path.read_text())}


def test_the_reference_is_what_the_code_renders() -> None:
    assert DOC.read_text() == render(), "docs/configuration.md is stale: run `python -m stack.configuration --write`"


def test_every_variable_the_code_reads_is_in_the_reference() -> None:
    read = variables_read()
    assert {"MODEL_STORE", "TS_PORTS", "MANAGEMENT_URL", "KEY_FILE"} <= read  # the scan itself works
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", DOC.read_text()))
    assert read <= documented
    assert read == set(VARIABLES)  # the renderer shows defaults with every one of them unset
