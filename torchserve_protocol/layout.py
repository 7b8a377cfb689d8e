"""Where things lie: the repository, the model store and a TorchServe run directory with its ``key_file.json``.

A run directory (``RUN_DIR``) holds one TorchServe's state: pid files, logs and, in its ``torchserve/`` working
directory, the key file. ``{ip}`` in ``RUN_DIR`` stands for this host's address, so the replicas of a scaled compose
service can share one volume and each keep a directory of its own; the launcher, the container healthcheck and the
publish CLI all resolve it here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IP_PLACEHOLDER = "{ip}"
KEY_FILE_NAME = "key_file.json"


def default_model_store() -> Path:
    """``$MODEL_STORE``, else the repository's ``model_store/``."""
    return Path(os.environ.get("MODEL_STORE", REPO / "model_store"))


def default_run_dir_template() -> str:
    """``$RUN_DIR`` (maybe holding ``{ip}``), else the repository's ``run/``."""
    return os.environ.get("RUN_DIR", str(REPO / "run"))


def own_address() -> str:
    """This host's address as other hosts see it (in a container: the container's address on its network)."""
    return socket.gethostbyname(socket.gethostname())


def run_dir_of(template: str, *, address: Callable[[], str] = own_address) -> Path:
    """``template`` with ``{ip}`` replaced by this host's address (asked only when the placeholder is there)."""
    return Path(template.replace(IP_PLACEHOLDER, address()) if IP_PLACEHOLDER in template else template)


def torchserve_home(run_dir: Path) -> Path:
    """TorchServe's working directory in a run directory: it writes ``key_file.json`` there."""
    return run_dir / "torchserve"


def key_file_in(run_dir: Path) -> Path:
    return torchserve_home(run_dir) / KEY_FILE_NAME


def temp_in(run_dir: Path) -> Path:
    """TorchServe's ``TEMP`` (Java's ``java.io.tmpdir`` and ``$TMPDIR``) in a run directory: the pid file, the
    workers' sockets and every registered archive, unpacked."""
    return run_dir / "tmp"


def run_dir_of_key_file(key_file: Path) -> Path:
    """The run directory whose TorchServe writes ``key_file`` (the inverse of :func:`key_file_in`)."""
    return key_file.parent.parent


def default_key_file() -> Path:
    """``$KEY_FILE``, else the key file of the TorchServe started with ``$RUN_DIR`` (default ``run/``)."""
    if os.environ.get("KEY_FILE"):
        return Path(os.environ["KEY_FILE"])
    return key_file_in(run_dir_of(default_run_dir_template()))
