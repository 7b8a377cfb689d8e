"""What a folder of modules imports, read from their source (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path


def top_level_imports(folder: Path) -> set[str]:
    """The top-level package of every absolute import in ``folder/*.py``."""
    imported: set[str] = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    return imported
