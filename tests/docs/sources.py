"""The single sources the docs' figures come from, read without running them: Python constants (by parsing the file,
so a test module or a torch-importing one is not imported), TorchServe's properties, the compose file, the Makefile's
defaults and the pinned requirements; and what the data and the default install's base model say when measured
(token lengths with MiniLM's own tokenizer, a weights file's parameter count)."""

from __future__ import annotations

import ast
import csv
import importlib
import json
import math
import re
import struct
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from torchserve_protocol.layout import REPO


def _value(node: ast.expr) -> Any:
    """A literal, or the literal a ``field(default_factory=lambda: ...)`` builds."""
    if isinstance(node, ast.Call) and node.keywords:
        factory = next((k.value for k in node.keywords if k.arg == "default_factory"), None)
        if isinstance(factory, ast.Lambda):
            return ast.literal_eval(factory.body)
    return ast.literal_eval(node)


def _assigned(path: str, name: str) -> ast.expr:
    body = ast.parse((REPO / path).read_text()).body
    *owners, target = name.split(".")
    for owner in owners:
        body = next(n.body for n in body if isinstance(n, ast.ClassDef) and n.name == owner)
    for node in body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == target for t in node.targets):
            return node.value
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == target:
            assert node.value is not None, f"{path}: {name} has no value"
            return node.value
    raise LookupError(f"{path} assigns no {name}")


def constant(path: str, name: str) -> Any:
    """The literal assigned to ``NAME`` (module level) or ``Class.attribute`` in the file at ``path``."""
    return _value(_assigned(path, name))


def length(path: str, name: str) -> int:
    """How many items the list, tuple or set literal assigned to ``NAME`` holds (its items need not be literals)."""
    node = _assigned(path, name)
    assert isinstance(node, ast.List | ast.Tuple | ast.Set), f"{path}: {name} is not a literal collection"
    return len(node.elts)


@cache
def properties(path: str = "config.properties") -> dict[str, str]:
    lines = (REPO / path).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def make_default(variable: str) -> str:
    match = re.search(rf"^(?:export\s+)?{variable}\s*\?=\s*(.*)$", (REPO / "Makefile").read_text(), flags=re.M)
    assert match, f"the Makefile sets no default for {variable}"
    return match[1].strip()


def pinned(requirements: str, package: str) -> str:
    text = (REPO / "requirements" / requirements).read_text()
    match = re.search(rf"^{re.escape(package)}==(\S+)", text, flags=re.M | re.I)
    assert match, f"requirements/{requirements} pins no {package}"
    return match[1]


def found(path: str, pattern: str) -> str:
    """The first group of ``pattern`` (multi-line, dot matches newlines) in the file at ``path``."""
    match = re.search(pattern, (REPO / path).read_text(), flags=re.M | re.S)
    assert match, f"{path} no longer matches {pattern}"
    return match[1]


def rows(path: Path) -> int:
    with path.open(encoding="utf-8", newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


@cache
def minilm_folder() -> Path:
    """The MiniLM base model's files, from the package of the default install (no hub, no cache)."""
    from training.base_models import BASE_MODELS

    package = BASE_MODELS["minilm"].package
    assert package is not None
    return Path(importlib.import_module(package).get_model_path())


def token_lengths(texts: list[str]) -> list[int]:
    """Each text's length in MiniLM's word pieces, [CLS] and [SEP] included, neither truncated nor padded."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts)]


def parameters(weights: Path) -> int:
    """How many numbers a safetensors file holds, read from its header (nothing is loaded)."""
    with weights.open("rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(math.prod(tensor["shape"]) for key, tensor in header.items() if key != "__metadata__")


def column(path: Path, name: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        return [row[name] for row in csv.DictReader(f)]
