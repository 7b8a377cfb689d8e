"""The edge tier: real nginx (edge/nginx.conf.template, rendered by stack/edge.py) in front of the real gateway
process (``python -m gateway``, started by the launcher's own :class:`stack.gateway.Gateway`) in front of the shared
TorchServe serving the tiny models. Real sockets on loopback; clients bind distinct source addresses (127.0.0.2,
127.0.0.3, ...: loopback accepts any 127/8 source) so the per-address limits see distinct clients.

``EDGE_URL=http://127.0.0.1:<port>`` points the tests at an edge that already runs (the compose edge: ``docker
compose port edge 8080``) instead of starting one; the tests that need an edge of their own then skip.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.edge import Edge
from stack.gateway import Gateway
from stack.torchserve import TorchServe
from tests.conftest import free_port

EDGE_URL = "EDGE_URL"  # an edge that already runs (compose); unset: the tests start their own


def raise_open_files(needed: int) -> int:
    """Raise this process's soft limit on open files to ``needed`` (up to the hard limit); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start_edge(run_dir: Path, upstream: str) -> Edge:
    edge = Edge(run_dir=run_dir, upstream=upstream, port=free_port())
    edge.start()
    return edge


@pytest.fixture(scope="module")
def local_stack(torchserve: TorchServe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The local stack as ``make serve`` runs it: the gateway on a loopback port, the edge in front; the edge's URL."""
    gateway = Gateway(torchserve=torchserve, host="127.0.0.1", port=free_port())
    gateway.start()
    edge = None
    try:
        gateway.wait_ready(timeout=60)
        edge = start_edge(tmp_path_factory.mktemp("edge"), f"{gateway.host}:{gateway.port}")
        edge.wait_up(path="/ready", timeout=30)
        yield edge.url
    finally:
        if edge is not None:
            edge.stop()
        gateway.stop()


@pytest.fixture(scope="module")
def edge_url(request: pytest.FixtureRequest) -> str:
    """The base URL of the edge under test: ``EDGE_URL`` when set (compose), else a local stack of this module's."""
    if url := os.environ.get(EDGE_URL):
        return url.rstrip("/")
    return str(request.getfixturevalue("local_stack"))


@pytest.fixture
def own_edge() -> None:
    """Tests that start an edge of their own (a gateway that is not there): not against a given EDGE_URL."""
    if os.environ.get(EDGE_URL):
        pytest.skip("starts an edge of its own; EDGE_URL names one that runs already")
