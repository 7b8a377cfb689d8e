"""The compose tier (`make test-compose`): the real images, built and run by a real Docker engine.

One compose project per session (``COMPOSE_PROJECT_NAME=bert-serving-tier``) on an EMPTY model store in a temporary
folder (``MODEL_STORE_DIR``): the first ``up`` trains the default models through the `models` service, exactly as a
user's first ``docker compose up``, on a few rows (``TRAIN_ARGS``, the launcher's setting) of the fastest offline base
(``BASE_MODEL``, :data:`TIER_BASE_MODEL`). The gateway is published on a loopback port the engine picks
(``GATEWAY_PORT=0``, read back with ``docker compose port``: no port is chosen here and bound later by someone else);
``down -v`` removes every container and volume at the end, even when a test failed. The commands the tests run are
the README's and docs/deployment.md's own (``COMMANDS``; tests/docs/test_compose_commands.py checks they appear
there verbatim).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from torchserve_protocol.layout import REPO

PROJECT = "bert-serving-tier"
APP_UID = 10001  # the TorchServe and training user of the images
# The base image and torch wheel stand-ins of a machine without a registry (../shared/docker/README.md); elsewhere
# the defaults of the Dockerfile (the public python image, the PyTorch CPU index) apply.
LOCAL_PYTHON_IMAGE = "local/python:3.11-slim-bookworm"
WHEELS = ".wheels"
# A few rows, one epoch: the training path of a first `up` (fine-tune, evaluate, int8 check, calibrate, package with a
# real metrics.json) in seconds. The same flags train cola 2.0 with `docker compose run --rm train`.
FEW_ROWS = "--max-train-rows 64 --max-eval-rows 64 --epochs 1"
# The base the tier trains on. Measured on this project's 2-core machine (2026-12-07, outside Docker, the same
# flags): mpnet, the default, 148 s for cola alone (2.9 GB resident); minilm 35 s (1.9 GB). Three trainings of MPNet
# and two MPNet replicas under load would take most of the tier's time: minilm, the same code path, is used unless
# BASE_MODEL says otherwise (the real-size tier serves MPNet-size archives).
TIER_BASE_MODEL = "minilm"


@dataclass
class Compose:
    env: dict[str, str]
    store: Path
    spare: Path | None = None  # a ready cola-2.0.mar to copy in (the real-size tier), instead of training one
    published: int | None = None  # the gateway's host port, once the engine has chosen it

    @property
    def port(self) -> int:
        """The host port the engine published the edge on (asked once it runs; it stays while the container does)."""
        if self.published is None:
            address = self.run("docker compose port edge 8080").stdout.strip()  # "127.0.0.1:49153"
            self.published = int(address.rpartition(":")[2])
        return self.published

    def run(self, command: str, *, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """One shell command line (a README line, with the published port of this run) in the repository root."""
        if "127.0.0.1:8000" in command:
            command = command.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        done = subprocess.run(
            ["bash", "-c", command], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if "docker compose up" in command:
            self.published = None  # a recreated gateway container may be published on another port
        if check and done.returncode != 0:
            raise AssertionError(f"`{command}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def container_ids(self, service: str) -> list[str]:
        return self.run(f"docker compose ps -q {service}").stdout.split()

    def chown_store(self, uid: int) -> None:
        for path in [self.store, *self.store.iterdir()]:
            os.chown(path, uid, uid)


def wait_for(condition: object, *, timeout: float, what: str) -> None:
    """Poll ``condition()`` until it is true (no sleeps standing in for readiness)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"not {what} after {timeout:.0f}s")


def ready_replicas(compose: Compose) -> int:
    try:
        body = httpx.get(compose.url("/ready"), timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return 0
    replicas = body.get("replicas") or {"ready": int(body.get("ready", False))}
    return int(replicas["ready"])


@pytest.fixture(scope="session")
def engine() -> None:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("no Docker engine: run `make test-compose` (it starts one with ../shared/docker/engine-up.sh)")


@pytest.fixture(scope="session")
def compose(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    """The stack's environment: an empty store owned by the images' user; the first `up` trains into it."""
    store = tmp_path_factory.mktemp("compose-store")
    env = dict(
        os.environ, COMPOSE_PROJECT_NAME=PROJECT, MODEL_STORE_DIR=str(store), GATEWAY_PORT="0", TRAIN_ARGS=FEW_ROWS,
        BASE_MODEL=os.environ.get("BASE_MODEL") or TIER_BASE_MODEL,
    )  # fmt: skip
    local_image = subprocess.run(["docker", "image", "inspect", LOCAL_PYTHON_IMAGE], capture_output=True)
    if local_image.returncode == 0 and "PYTHON_IMAGE" not in os.environ:
        env["PYTHON_IMAGE"] = LOCAL_PYTHON_IMAGE
    if (REPO / WHEELS).is_dir() and "TORCH_WHEELS" not in os.environ:
        env["TORCH_WHEELS"] = WHEELS
    stack = Compose(env=env, store=store)
    store.chmod(0o755)  # as a user's folder usually is (pytest makes 0700 ones)
    stack.chown_store(APP_UID)
    try:
        yield stack
    finally:
        stack.run("docker compose --profile train down -v --remove-orphans --timeout 20", check=False)
