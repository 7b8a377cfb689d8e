"""What the compose tier (tests/compose, real images on a real engine) cannot cover: it builds with this machine's
stand-ins (a local base image, the torch wheel from the build context), so the defaults a normal user builds with,
the public python image and the PyTorch CPU index, are checked here by reading the files."""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.conftest import REPO, Dockerfile

PUBLIC_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")  # an exact patch release, the official image
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def test_dockerfile_needs_no_registry_only_frontend() -> None:
    assert not re.search(r"^#\s*syntax\s*=", (REPO / "Dockerfile").read_text(), flags=re.M | re.I)


def test_defaults_are_the_public_python_image_and_the_torch_cpu_index(
    dockerfile: Dockerfile, services: dict[str, dict[str, Any]]
) -> None:
    assert PUBLIC_PYTHON.match(dockerfile.args["PYTHON_IMAGE"])
    assert all(stage.base != "local/python:3.11-slim-bookworm" for stage in dockerfile.stages.values())
    ml_args = dict(arg.partition("=")[::2] for arg in dockerfile.stages["ml"].args("ARG"))
    assert ml_args == {"TORCH_INDEX_URL": TORCH_CPU_INDEX, "TORCH_WHEELS": ""}
    build_args = services["torchserve"]["build"]["args"]
    assert build_args["PYTHON_IMAGE"] == "${PYTHON_IMAGE:-" + dockerfile.args["PYTHON_IMAGE"] + "}"
    assert build_args["TORCH_INDEX_URL"] == "${TORCH_INDEX_URL:-" + TORCH_CPU_INDEX + "}"
    assert build_args["TORCH_WHEELS"] == "${TORCH_WHEELS:-}"


def test_local_images_are_built_never_pulled(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service["pull_policy"] == "build", name
