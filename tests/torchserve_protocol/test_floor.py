"""The lowest floor: the package imports the standard library only, so every image and the handler inside each
archive can carry it without anything else of the project."""

from __future__ import annotations

import sys

from tests.imports import top_level_imports
from torchserve_protocol.layout import REPO


def test_the_package_imports_only_the_standard_library_and_itself() -> None:
    imported = top_level_imports(REPO / "torchserve_protocol")
    assert imported - {"__future__", "torchserve_protocol"} <= set(sys.stdlib_module_names)
