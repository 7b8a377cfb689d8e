"""Each image's code, rebuilt from the Dockerfile's COPY lines (through .dockerignore) in a folder of its own, imports
what the image runs: a module that moved to another package (the protocol package, say) and was not copied fails
here, not at a container's start."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.conftest import APP, Dockerfile
from torchserve_protocol.layout import REPO

# What each image runs: its CMD/ENTRYPOINT and healthcheck, and the publish CLI (docker compose exec).
RUNS = {
    "gateway": ["gateway.__main__", "gateway.app"],
    "code": [
        "stack.__main__",
        "stack.publish",
        "training.train",
        "training.package",
        "handlers.text_classifier_handler",
    ],
}


def allowed_by_dockerignore(source: str) -> bool:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    allowed = [line[1:] for line in lines if line.startswith("!")]
    return any(source == pattern or source.startswith(pattern) for pattern in allowed)


def image_tree(copies: list[str], root: Path) -> None:
    """What ``COPY <sources...> <dest>`` (relative to WORKDIR /app) puts in the image, under ``root``."""
    for arg in copies:
        *sources, dest = [token for token in arg.split() if not token.startswith("--")]
        where = PurePosixPath(dest)
        target = root / (where.relative_to(APP) if where.is_absolute() else where)
        for source in sources:
            assert allowed_by_dockerignore(source), f"{source} is copied but .dockerignore leaves it out"
            path = REPO / source
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                folder = target if dest.endswith("/") else target.parent
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, folder / path.name if dest.endswith("/") else target)


@pytest.mark.parametrize("stage", sorted(RUNS))
def test_the_image_code_imports_what_the_image_runs(dockerfile: Dockerfile, stage: str, tmp_path: Path) -> None:
    copies = [arg for arg in dockerfile.stages[stage].args("COPY") if "requirements/" not in arg]
    image_tree(copies, tmp_path)
    probe = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]"
    result = subprocess.run(
        [sys.executable, "-c", probe, *RUNS[stage]], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_healthcheck_imports_from_its_own_folder(dockerfile: Dockerfile, tmp_path: Path) -> None:
    image_tree(dockerfile.stages["code"].args("COPY"), tmp_path)
    probe = "import runpy, sys; sys.argv = ['ready.py']; runpy.run_path('docker/ready.py', run_name='not_main')"
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_file_a_stage_copies_from_the_context_is_in_it(dockerfile: Dockerfile) -> None:
    """Each COPY source of every stage (the edge's nginx template and entrypoint too) passes .dockerignore: the edge
    image's files were left out of the context before it was first built."""
    for name, stage in dockerfile.stages.items():
        for arg in stage.args("COPY"):
            if "--from" in arg:
                continue
            *sources, _ = [token for token in arg.split() if not token.startswith("--")]
            for source in sources:
                assert allowed_by_dockerignore(source), (
                    f"stage {name}: {source} is copied but .dockerignore leaves it out"
                )
