"""Shared fixtures: tiny random BERT classifiers, real .mar archives, and real TorchServe processes on free ports."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack.management import Management, register_store
from stack.torchserve import Ports, TorchServe
from tests.tiny_models import COLA_LABELS, SENTIMENT_LABELS, make_tiny_classifier
from training.package import package
from training.tasks import default_data_dir

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports() -> Ports:
    """Free loopback ports for every listener of one TorchServe (HTTP APIs and gRPC)."""
    return Ports(*(free_port() for _ in range(5)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets (``DATA_DIR``, default the repository's ``data/``)."""
    return default_data_dir()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``save_pretrained`` directories of tiny random classifiers, by model name."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "cola": make_tiny_classifier(root / "cola", COLA_LABELS, seed=1),
        "sentiment": make_tiny_classifier(root / "sentiment", SENTIMENT_LABELS, seed=2),
    }


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """A model store with ``cola-1.0.mar`` and ``sentiment-1.0.mar`` built by the real packaging code."""
    store = tmp_path_factory.mktemp("model-store")
    for name, model_dir in tiny_models.items():
        package(model_dir, name=name, store=store, version="1.0")
    return store


def start_torchserve(store: Path, run_dir: Path) -> TorchServe:
    """Start TorchServe on free loopback ports, register the store, wait until every worker is READY."""
    ts = TorchServe(model_store=store, run_dir=run_dir, ports=free_ports())
    ts.start()
    try:
        ts.wait_up()
        management = management_client(ts)
        defaults = register_store(management, store)
        management.wait_ready(defaults)
    except BaseException:
        ts.stop()
        raise
    return ts


def management_client(ts: TorchServe) -> Management:
    return Management(ts.management_url, ts.key_file)


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory: pytest.TempPathFactory, tiny_store: Path) -> Iterator[TorchServe]:
    """One shared TorchServe serving the tiny models; tests that change its state must use ``torchserve_factory``."""
    ts = start_torchserve(tiny_store, tmp_path_factory.mktemp("ts-shared"))
    yield ts
    ts.stop()


@pytest.fixture
def torchserve_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], TorchServe]]:
    """Start private TorchServe instances (for tests that register, stop or break things); all stopped after."""
    started: list[TorchServe] = []

    def start(store: Path) -> TorchServe:
        ts = start_torchserve(store, tmp_path_factory.mktemp("ts-private"))
        started.append(ts)
        return ts

    yield start
    for ts in started:
        ts.stop()
