"""docs/architecture.md's layering, held by import-linter's contracts in pyproject.toml: the project keeps them, they
state the doc's floors, and each kind of violation planted in a copy of the packages is refused."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from torchserve_protocol.layout import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # the venv's, as `make lint` runs it
DOC = REPO / "docs" / "architecture.md"


def config() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]


def contract(contract_id: str) -> dict[str, Any]:
    return next(c for c in config()["contracts"] if c["id"] == contract_id)


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root`` with ``root/pyproject.toml``'s contracts (no cache: the code
    as it is now)."""
    command = [str(LINT_IMPORTS), "--no-cache", "--no-logo", "--config", str(root / "pyproject.toml")]
    return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120, check=False)


def doc_floors() -> list[list[str]]:
    """The floors of the doc's first text block, top to bottom: a package per line, lines marked ``}`` share one."""
    block = re.search(r"```text\n(.*?)```", DOC.read_text(), flags=re.S)
    assert block is not None, "docs/architecture.md lost its drawing of the floors"
    floors: list[list[str]] = []
    shared = False
    for line in block.group(1).splitlines():
        package = line.split("/")[0]
        if shared and "}" in line:
            floors[-1].append(package)
        else:
            floors.append([package])
        shared = "}" in line
    return floors


def test_the_project_keeps_its_layering_contracts() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(config()['contracts'])} kept, 0 broken." in result.stdout


def test_the_contracts_state_the_floors_of_the_architecture_doc() -> None:
    """The layers contract is the doc's drawing, floor by floor; its packages are every root package; the doc's two
    sentences about the gateway and the handlers are the two forbidden contracts."""
    floors = [floor.split(" | ") for floor in contract("layers")["layers"]]
    assert floors == doc_floors()
    assert [package for floor in floors for package in floor] == config()["root_packages"]
    text = " ".join(DOC.read_text().split())
    assert "`gateway/` never imports `stack/`, `training/` or `handlers/`" in text
    assert contract("gateway")["source_modules"] == ["gateway"]
    assert contract("gateway")["forbidden_modules"] == ["stack", "training", "handlers"]
    assert "`handlers/` imports only `torchserve_protocol/` of the project" in text
    assert contract("handlers")["source_modules"] == ["handlers"]
    assert set(contract("handlers")["forbidden_modules"]) == set(config()["root_packages"]) - {
        "handlers",
        "torchserve_protocol",
    }
    assert set(contract("acyclic")["ancestors"]) == set(config()["root_packages"])


@pytest.mark.parametrize(
    ("module", "planted", "refusal"),
    [
        (
            "torchserve_protocol/layout.py",
            "import handlers.text_classification",
            "torchserve_protocol is not allowed to import handlers",
        ),
        ("training/tasks.py", "from gateway import settings", "training is not allowed to import gateway"),
        ("gateway/settings.py", "import handlers.text_classification", "gateway is not allowed to import handlers"),
        ("handlers/text_classification.py", "import training.tasks", "handlers is not allowed to import training"),
        (
            "torchserve_protocol/json_files.py",
            "import torchserve_protocol.store",
            "No cycles are allowed in torchserve_protocol",
        ),
    ],
    ids=["upward", "between-siblings", "gateway-to-handlers", "handlers-to-training", "cycle-in-a-package"],
)
def test_a_planted_violation_is_refused(tmp_path: Path, module: str, planted: str, refusal: str) -> None:
    """A copy of the six packages and the contracts is kept as it is, and refused once one import is added, inside a
    function as a cycle-hiding import would be."""
    for package in config()["root_packages"]:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path).returncode == 0

    with (tmp_path / module).open("a") as source:
        source.write(f"\n\ndef _planted() -> None:\n    {planted}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert refusal in result.stdout
