"""Start, find and stop the configurations under test, each on free loopback ports, with readiness polled."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import psutil

from stack.management import Management
from stack.torchserve import Ports, StackError, TorchServe, stop_process_group, wait_http
from torchserve_protocol.archives import archive_name, archives_in
from torchserve_protocol.keys import read_key
from torchserve_protocol.layout import REPO, key_file_in
from torchserve_protocol.store import read_state

ServerError = StackError  # a configuration failed to start or answer


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def served_archives(store: Path) -> dict[str, Path]:
    """``{model name: archive}``: the default version of each model (the store's ``served.json``; a store without
    one: the newest of each model, as a first start would choose)."""
    archives = archives_in(store)  # sorted by name, then version
    state = read_state(store)
    if state is not None:
        return {name: store / archive_name(name, model.default) for name, model in state.models.items()}
    return {a.name: a.path for a in archives}  # the newest of each name comes last


def store_of(archives: Iterable[Path], store: Path) -> Path:
    """A model store holding only ``archives``: hard links (TorchServe refuses symlinks out of its store), else
    copies (another file system)."""
    store.mkdir(parents=True)
    for path in archives:
        try:
            os.link(path, store / path.name)
        except OSError:
            shutil.copy2(path, store / path.name)
    return store


def extract(archive: Path, into: Path) -> Path:
    target = into / archive.stem
    with zipfile.ZipFile(archive) as z:
        z.extractall(target)
    return target


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def wait_idle(
    procs: list[psutil.Process], *, below: float = 0.05, window_s: float = 0.5, timeout_s: float = 120
) -> float:
    """Wait until ``procs`` together use less than ``below`` of one core over ``window_s``; return the seconds waited.

    A closed-loop run ends with requests still queued in the server (64 clients of 8-review batches leave seconds of
    work behind): the next cell must not start while that backlog is still being served."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = cpu_seconds(procs)
        time.sleep(window_s)
        if cpu_seconds(procs) - before < below * window_s:
            break
    return time.monotonic() - started


def rss_mib(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


START_ATTEMPTS = 3  # a free port can be taken by another process between choosing it and the server's bind
PORT_TAKEN = b"address already in use"


@dataclass
class LocalServer:
    """One server process of a configuration on a free loopback port, its output appended to ``log``; started again
    on a new port (up to ``START_ATTEMPTS``) when its log says the chosen one was taken meanwhile."""

    models: dict[str, Path]  # name -> model directory
    log: Path
    port: int = field(default_factory=lambda: free_ports(1)[0])
    process: subprocess.Popen[bytes] | None = None
    ready_path: ClassVar[str] = "/health"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        """The command line on ``self.port``, and its environment (``None``: this process's)."""
        raise NotImplementedError

    def start(self, *, timeout: float) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            cmd, env = self.command()
            seen = self.log.stat().st_size if self.log.exists() else 0
            with self.log.open("ab") as out:
                self.process = subprocess.Popen(
                    cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            try:
                wait_http(f"{self.url}{self.ready_path}", timeout=timeout, process=self.process)
                return
            except ServerError:
                self.stop()
                with self.log.open("rb") as written:
                    written.seek(seen)
                    taken = PORT_TAKEN in written.read().lower()
                if attempt == START_ATTEMPTS or not taken:
                    raise
                self.port = free_ports(1)[0]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process_group(self.process.pid, timeout=15)
        if self.process is not None:
            self.process.wait(timeout=10)


@dataclass
class Naive(LocalServer):
    """benchmarks/baselines/naive_server.py in its own process."""

    threads: int = 1  # torch intra-op threads; 0: torch's default (one per core)

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        cmd = [sys.executable, "-m", "benchmarks.baselines.naive_server", "--port", str(self.port)]
        cmd += ["--threads", str(self.threads)]
        for name in ("cola", "sentiment"):
            if name in self.models:
                cmd += [f"--{name}", str(self.models[name])]
        return cmd, None

    def roles(self) -> dict[str, list[psutil.Process]]:
        return {"naive": tree(self.process.pid)} if self.process else {}


PEER_VENV = REPO / ".venv-peer"  # `make peer`: BentoML and the handler's dependencies, apart from the project's
PEER_SERVICE = "benchmarks.baselines.bentoml_service:Api"


@dataclass
class Peer(LocalServer):
    """The same models under BentoML (``benchmarks/baselines/bentoml_service.py``), run by ``bentoml serve`` from
    the peer's own virtualenv: an arbiter, the front service's worker and the model service's worker(s). The models
    are extracted archives (their model-config.yaml carries the served settings)."""

    python: Path = PEER_VENV / "bin" / "python"
    workers: int = 1  # model-service processes
    # /readyz answers 200 once the front service and the model service it depends on both answer
    ready_path: ClassVar[str] = "/readyz"

    def start(self, *, timeout: float) -> None:
        if not self.python.is_file():
            raise ServerError(f"{self.python} does not exist: `make peer` builds the peer's virtualenv (BentoML)")
        super().start(timeout=timeout)

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        env = {
            **os.environ,
            **{f"PEER_{name.upper()}": str(path) for name, path in self.models.items()},
            "PEER_WORKERS": str(self.workers),
            "BENTOML_DO_NOT_TRACK": "true",  # no usage statistics: the machine is offline, and it is not ours to send
            "BENTOML_HOME": str(self.log.parent / "bentoml-home"),  # its state and metrics files, not ~/bentoml
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        host = ["--host", "127.0.0.1", "--port", str(self.port)]
        return [str(self.python), "-m", "bentoml", "serve", PEER_SERVICE, *host], env

    def roles(self) -> dict[str, list[psutil.Process]]:
        if not self.process:
            return {}
        procs = tree(self.process.pid)
        model = [p for p in procs if "Classifier" in _cmdline(p)]
        front = [p for p in procs if "Api" in _cmdline(p)]
        arbiter = [p for p in procs if p not in model and p not in front]
        return {"bentoml-api": front, "bentoml-model": model, "bentoml-arbiter": arbiter}


@dataclass
class Stack:
    """The real stack (``python -m stack start``): the edge (nginx), gateway and TorchServe, in a private run dir."""

    store: Path
    run_dir: Path
    ports: list[int] = field(default_factory=lambda: free_ports(6))

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[5]}"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def _cmd(self, command: str) -> list[str]:
        return [
            sys.executable, "-m", "stack", command, "--no-train",
            "--model-store", str(self.store), "--run-dir", str(self.run_dir),
            "--ts-ports", ",".join(map(str, self.ports[:5])), "--gateway-port", str(self.ports[5]),
        ]  # fmt: skip

    def start(self, *, timeout: float) -> None:
        log = self.run_dir / "stack-start.log"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            rc = subprocess.run(
                [*self._cmd("start"), "--timeout", str(timeout)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                timeout=timeout * 2 + 60, check=False,
            ).returncode  # fmt: skip
        if rc != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise ServerError(f"`python -m stack start` failed ({rc}):\n{tail}")
        wait_http(f"{self.gateway_url}/ready", timeout=timeout)

    def inference_key(self) -> str:
        return read_key(key_file_in(self.run_dir), "inference").value

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def roles(self) -> dict[str, list[psutil.Process]]:
        ts_pid, gw_pid, edge_pid = self._pid("torchserve"), self._pid("gateway"), self._pid("edge")
        return {"edge": tree(edge_pid) if edge_pid else [], "gateway": tree(gw_pid) if gw_pid else [],
                **torchserve_roles(ts_pid)}  # fmt: skip

    def stop(self) -> None:
        subprocess.run(self._cmd("stop"), cwd=REPO, capture_output=True, timeout=120, check=False)


def torchserve_roles(pid: int | None) -> dict[str, list[psutil.Process]]:
    """TorchServe's process tree split into its Java frontend and its Python workers (as they run now: a worker
    started later, by a registration or a restart, is only found by calling this again)."""
    ts = tree(pid) if pid else []
    workers = [p for p in ts if "model_service_worker" in " ".join(_cmdline(p))]
    return {"ts-frontend": [p for p in ts if p not in workers], "ts-workers": workers}


@dataclass
class TorchServeAlone:
    """TorchServe with no gateway and nothing registered, started by the stack's own launcher
    (:class:`stack.torchserve.TorchServe`: the project's config.properties, key file and log set-up) on free
    loopback ports, again on new ones when its log says a chosen port was taken meanwhile. The caller registers
    what it measures through :meth:`management`."""

    store: Path
    run_dir: Path
    torchserve: TorchServe | None = None

    @property
    def ts(self) -> TorchServe:
        if self.torchserve is None:
            raise ServerError("TorchServe has not been started")
        return self.torchserve

    def start(self, *, timeout: float) -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.torchserve = TorchServe(model_store=self.store, run_dir=self.run_dir, ports=Ports(*free_ports(5)))
            out = self.torchserve.log_dir / "torchserve.out"
            seen = out.stat().st_size if out.exists() else 0
            self.torchserve.start()
            try:
                self.torchserve.wait_up(timeout=timeout)
                return
            except ServerError:
                self.torchserve.stop()
                with out.open("rb") as written:
                    written.seek(seen)
                    taken = PORT_TAKEN in written.read().lower()
                if attempt == START_ATTEMPTS or not taken:
                    raise

    def management(self) -> Management:
        return Management(self.ts.management_url, self.ts.key_file)

    def inference_key(self) -> str:
        return self.ts.keys()["inference"]

    def roles(self) -> dict[str, list[psutil.Process]]:
        return torchserve_roles(self.torchserve.process.pid if self.torchserve and self.torchserve.process else None)

    def stop(self) -> None:
        if self.torchserve is not None:
            self.torchserve.stop()


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []
