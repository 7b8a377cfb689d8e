"""The serving code uses its HTTP libraries as they ship, through their public APIs (issue 25, item 1): no module of
gateway/ or stack/ imports an underscore name or an implementation module of uvicorn, starlette, fastapi, httpx,
httpx-aiohttp or aiohttp, reaches for an underscore attribute of them, subclasses a class of uvicorn (its protocols),
or imports an HTTP parser or transport below them (httptools, h11, httpcore: parsing HTTP is the server's and the
client's job). Read from the source; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from torchserve_protocol.layout import REPO

LIBRARIES = frozenset({"uvicorn", "starlette", "fastapi", "httpx", "httpx_aiohttp", "aiohttp"})
# uvicorn's public surface: uvicorn.run / Config / Server, and uvicorn.config (Config's module; its LOGGING_CONFIG is
# the documented default logging set-up). Its protocols, loops, lifespan, middleware and supervisors are internals.
UVICORN_PUBLIC = frozenset({"uvicorn", "uvicorn.config"})
BELOW = frozenset({"httptools", "h11", "httpcore"})
FOLDERS = ("gateway", "stack")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_problem(module: str) -> str | None:
    """Why importing ``module`` breaks the rule, or ``None``."""
    parts = module.split(".")
    if parts[0] in BELOW:
        return f"imports {module} (HTTP below the server and the client)"
    if parts[0] not in LIBRARIES:
        return None
    if any(_private(part) for part in parts):
        return f"imports the private module {module}"
    if parts[0] == "uvicorn" and module not in UVICORN_PUBLIC:
        return f"imports uvicorn's implementation module {module}"
    return None


def problems(source: str) -> list[str]:
    """Every breach of the rule in one module's source."""
    found: list[str] = []
    libraries: dict[str, str] = {}  # local name -> the library module or class it stands for
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (problem := module_problem(alias.name)) is not None:
                    found.append(f"line {node.lineno}: {problem}")
                if alias.name.split(".")[0] in LIBRARIES:
                    libraries[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if (problem := module_problem(node.module)) is not None:
                found.append(f"line {node.lineno}: {problem}")
            if node.module.split(".")[0] in LIBRARIES:
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"line {node.lineno}: imports the private name {alias.name} of {node.module}")
                    libraries[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in libraries:
                found.append(f"line {node.lineno}: uses the private attribute {node.attr} of {libraries[root.id]}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and libraries.get(root.id, "").startswith("uvicorn"):
                    found.append(f"line {node.lineno}: class {node.name} subclasses uvicorn's {ast.unparse(base)}")
    return found


def modules() -> list[Path]:
    return sorted(path for folder in FOLDERS for path in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(REPO)))
def test_the_serving_code_uses_public_apis_only(path: Path) -> None:
    assert problems(path.read_text()) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\n"
            "class Bounded(HttpToolsProtocol):\n    pass\n",
            ["implementation module uvicorn.protocols.http.httptools_impl", "subclasses uvicorn's HttpToolsProtocol"],
        ),
        ("from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT\n", ["implementation module"]),
        ("import httptools\n", ["HTTP below the server"]),
        ("import h11\n", ["HTTP below the server"]),
        ("from httpx._models import Response\n", ["private module httpx._models"]),
        ("from starlette.routing import _wrap\n", ["private name _wrap"]),
        ("import httpx\nhttpx._client.USE_CLIENT_DEFAULT\n", ["private attribute _client of httpx"]),
        ("import uvicorn\nfrom uvicorn.config import LOGGING_CONFIG\nimport httpx\nhttpx.__version__\n", []),
    ],
    ids=["subclassed-protocol", "flow-control", "httptools", "h11", "private-module", "private-name",
         "private-attribute", "public"],
)  # fmt: skip
def test_the_scan_sees_each_kind_of_breach(source: str, expected: list[str]) -> None:
    found = problems(source)
    assert len(found) == len(expected), found
    for problem, words in zip(found, expected, strict=True):
        assert words in problem, found
