"""Where a TorchServe instance keeps its state (pid file, ``key_file.json``, logs): ``RUN_DIR``, in which ``{ip}``
stands for this host's address. The replicas of a scaled compose service share one volume and each keeps a
directory of its own; the launcher, the container healthcheck and the publish CLI all resolve it here."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from stack.torchserve import REPO

IP_PLACEHOLDER = "{ip}"


def own_address() -> str:
    """This host's address as other hosts see it (in a container: the container's address on its network)."""
    return socket.gethostbyname(socket.gethostname())


def run_dir_of(template: str, *, address: Callable[[], str] = own_address) -> Path:
    """``template`` with ``{ip}`` replaced by this host's address (asked only when the placeholder is there)."""
    return Path(template.replace(IP_PLACEHOLDER, address()) if IP_PLACEHOLDER in template else template)


def default_key_file() -> Path:
    """``$KEY_FILE``, else the key file of the TorchServe started with ``$RUN_DIR`` (default ``run/``)."""
    if os.environ.get("KEY_FILE"):
        return Path(os.environ["KEY_FILE"])
    return run_dir_of(os.environ.get("RUN_DIR", str(REPO / "run"))) / "torchserve" / "key_file.json"
