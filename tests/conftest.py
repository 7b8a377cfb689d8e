"""Shared fixtures: tiny random BERT classifiers, real .mar archives, and real TorchServe processes on free ports."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from stack import served_state
from stack.management import Management
from stack.reconcile import Reconciler
from stack.torchserve import CONFIG, Ports, StackError, TorchServe
from stack.worker_watch import WorkerWatch
from tests.students import Taught, teach_and_distil
from tests.tiny_models import COLA_LABELS, SENTIMENT_LABELS, make_tiny_classifier
from torchserve_protocol.store import ModelState, State, VersionState, write_state
from torchserve_protocol.workers import workers_file_beside
from training.package import ServingConfig, package
from training.tasks import default_data_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# What the code under test reads from the environment (docs/configuration.md): a developer's own values (say a
# GATEWAY_READ_TIMEOUT_S exported for `make serve`) must not change what the suite tests. Tests set what they need.
INHERITED_PREFIXES = ("GATEWAY_", "TS_")
INHERITED_NAMES = ("INFERENCE_KEY_FILE", "KEY_FILE", "MANAGEMENT_URL")
START_ATTEMPTS = 3  # a free port can be taken by another process between the check and TorchServe's bind


def inherited_settings() -> list[str]:
    return [name for name in os.environ if name.startswith(INHERITED_PREFIXES) or name in INHERITED_NAMES]


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    """Remove inherited ``GATEWAY_*``/``TS_*`` (and the launcher's and publish CLI's) variables for the session."""
    with pytest.MonkeyPatch.context() as patch:
        for name in inherited_settings():
            patch.delenv(name)
        yield


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports() -> Ports:
    """Free loopback ports for every listener of one TorchServe (HTTP APIs and gRPC), all different."""
    ports: set[int] = set()
    while len(ports) < 5:
        ports.add(free_port())
    return Ports(*sorted(ports))


def ports_are_free(ports: Ports) -> bool:
    """Whether every port can be bound right now (a restart on the same ports checks this first)."""
    for port in ports.__dict__.values():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TorchServe's Netty binds
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


PORT_TAKEN = ("address already in use", "bindexception")  # TorchServe's Netty and Python's asyncio, lowercased


def says_a_port_was_taken(text: str) -> bool:
    return any(sign in text.lower() for sign in PORT_TAKEN)


def logs_say_a_port_was_taken(folder: Path) -> bool:
    """Some log under ``folder`` says a bind failed because the port was taken (by another process, meanwhile)."""
    for log in folder.rglob("*"):
        with suppress(OSError):
            if log.is_file() and says_a_port_was_taken(log.read_text(errors="replace")):
                return True
    return False


def lost_a_port(ts: TorchServe) -> bool:
    """TorchServe failed to start because one of its ports was taken meanwhile (its log says so)."""
    with suppress(OSError):
        return says_a_port_was_taken((ts.log_dir / "torchserve.out").read_text(errors="replace"))
    return False


def launch_torchserve(store: Path, run_dir: Path, *, ports: Ports | None = None, config: Path = CONFIG) -> TorchServe:
    """Start TorchServe and wait until its management API answers. With ``ports=None`` it takes free ports and, when
    one was taken between the check and the bind, starts again on new ones (up to ``START_ATTEMPTS``). With given
    ``ports`` (a restart the gateway must find again) they are checked free first, and a taken one fails clearly."""
    for attempt in range(1, START_ATTEMPTS + 1):
        chosen = ports or free_ports()
        if ports is not None and not ports_are_free(ports):
            raise RuntimeError(f"cannot restart TorchServe on {ports}: a port was taken since the first start")
        ts = TorchServe(model_store=store, run_dir=run_dir, ports=chosen, config=config)
        ts.start()
        try:
            ts.wait_up()
            return ts
        except StackError:
            ts.stop()
            if ports is not None or attempt == START_ATTEMPTS or not lost_a_port(ts):
                raise
            (ts.log_dir / "torchserve.out").rename(ts.log_dir / f"torchserve.out.attempt{attempt}")
    raise AssertionError("unreachable")


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
def taught(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Taught:
    """A tiny cola teacher trained on a few rows (``cola-1.0``, served by default) and its student (``cola-2.0``,
    ``--student-of`` alone), both really trained; tests that change the store copy its archives first."""
    return teach_and_distil(tmp_path_factory.mktemp("taught"), data_dir)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    """A model store with ``cola-1.0.mar`` and ``sentiment-1.0.mar`` built by the real packaging code."""
    store = tmp_path_factory.mktemp("model-store")
    for name, model_dir in tiny_models.items():
        package(model_dir, name=name, store=store, version="1.0")
    return store


DEFAULT_MODELS = ("cola", "sentiment")


def apply_store(ts: TorchServe, store: Path) -> Reconciler:
    """What the launcher does once TorchServe is up: write the store's served.json if it has none, apply it, wait
    until every worker is READY. The returned reconciler follows later changes once started."""
    state = served_state.ensure(store, DEFAULT_MODELS)
    management = management_client(ts)
    reconciler = Reconciler(management, store, WorkerWatch(management, workers_file_beside(ts.key_file)))
    reconciler.tick()
    assert not reconciler.problems, reconciler.problems
    management.wait_ready(state.models)
    return reconciler


def serve_versions(store: Path, served: dict[str, tuple[str, list[str]]]) -> None:
    """Write the store's served.json: ``{model: (default, registered versions)}``, each with the archives' workers
    (what ``publish register`` records)."""
    workers = ServingConfig().min_workers
    write_state(store, State(models={
        name: ModelState(default=default, versions={v: VersionState(workers) for v in versions})
        for name, (default, versions) in served.items()
    }))  # fmt: skip


def start_torchserve(store: Path, run_dir: Path) -> TorchServe:
    """Start TorchServe on free loopback ports, apply the store's state, wait until every worker is READY."""
    ts = launch_torchserve(store, run_dir)
    try:
        apply_store(ts, store)
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
