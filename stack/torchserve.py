"""Start, watch and stop one TorchServe process tree: the only module that knows how TorchServe is launched.

TorchServe writes state relative to its environment: ``key_file.json`` into its working directory, the pid file
into ``$TMPDIR``, the workers' Unix sockets (``.ts.sock.9000``...) and extracted archives into ``$TEMP`` (Java's
``java.io.tmpdir``, /tmp when unset: two instances would connect to each other's workers), logs into
``$LOG_LOCATION``. :class:`TorchServe` pins all of them under one
run directory, so a stack started here (``make start``) or by a test never collides with another one, and stopping
it kills the whole process group (frontend and every worker), never leaving a process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from torchserve_protocol.keys import KEY_KINDS, KeyFileError, bearer, read_key
from torchserve_protocol.layout import REPO, key_file_in, temp_in, torchserve_home

CONFIG = REPO / "config.properties"
LOG_CONFIG = REPO / "stack" / "log4j2.xml"


class StackError(RuntimeError):
    """A start/stop/readiness step failed; the message says what and where to look."""


@dataclass(frozen=True)
class Ports:
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071


@dataclass
class TorchServe:
    """One TorchServe instance whose files all live under ``run_dir``."""

    model_store: Path
    run_dir: Path
    host: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    config: Path = CONFIG
    process: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        """TorchServe's working directory: holds ``key_file.json`` and the effective config."""
        return torchserve_home(self.run_dir)

    @property
    def key_file(self) -> Path:
        return key_file_in(self.run_dir)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "torchserve.pid"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def url(self, api: str) -> str:
        return f"http://{self.host}:{getattr(self.ports, api)}"

    @property
    def inference_url(self) -> str:
        return self.url("inference")

    @property
    def management_url(self) -> str:
        return self.url("management")

    @property
    def metrics_url(self) -> str:
        return self.url("metrics")

    def effective_config(self) -> Path:
        """The project's config.properties plus this run's addresses and store (later keys win)."""
        overrides = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_port": str(self.ports.grpc_inference),
            "grpc_management_port": str(self.ports.grpc_management),
            "model_store": str(self.model_store.resolve()),
        }
        lines = [self.config.read_text(), "# --- per-run values added by stack/torchserve.py"]
        lines += [f"{key}={value}" for key, value in overrides.items()]
        path = self.home / "config.properties"
        path.write_text("\n".join(lines) + "\n")
        return path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TMPDIR=str(temp_in(self.run_dir)),  # the pid file
            TEMP=str(temp_in(self.run_dir)),  # java.io.tmpdir: the workers' Unix sockets and extracted archives
            LOG_LOCATION=str(self.log_dir),
            METRICS_LOCATION=str(self.log_dir),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            TOKENIZERS_PARALLELISM="false",
            OMP_NUM_THREADS="1",  # the handler sets torch threads from the archive's settings
            PYTHONUNBUFFERED="1",
            # Workers hand the raw body to the handler, which decodes it per request (a failed decode in the worker
            # logs a traceback per bad request: log amplification from outside).
            TS_DECODE_INPUT_REQUEST="false",
        )
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def start(self) -> None:
        """Launch TorchServe in its own process group; returns at once (see :meth:`wait_up`)."""
        if self.running_pid() is not None:
            raise StackError(f"TorchServe already running from {self.run_dir} (pid file {self.pid_file})")
        for directory in (self.home, temp_in(self.run_dir), self.log_dir, self.model_store):
            directory.mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)
        cmd = [
            str(Path(sys.executable).parent / "torchserve"),
            "--start", "--foreground", "--ncs",
            "--model-store", str(self.model_store.resolve()),
            "--ts-config", str(self.effective_config()),
            "--log-config", str(LOG_CONFIG),
        ]  # fmt: skip
        stdout = (self.log_dir / "torchserve.out").open("ab")
        self.process = subprocess.Popen(
            cmd,
            cwd=self.home,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals the frontend and all workers at once
        )
        stdout.close()
        self.pid_file.write_text(str(self.process.pid))

    def running_pid(self) -> int | None:
        return pid_from(self.pid_file, marker="torchserve")

    def keys(self) -> dict[str, str]:
        """The current keys: ``{"management": ..., "inference": ..., "API": ...}``."""
        return {kind: read_key(self.key_file, kind).value for kind in KEY_KINDS}

    def wait_up(self, timeout: float = 90.0) -> None:
        """Block until the management API answers with a valid key (workers may still be loading)."""
        deadline = time.monotonic() + timeout
        last = "no key file yet"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StackError(f"TorchServe exited with {self.process.returncode}; see {self.log_dir}")
            if self.key_file.is_file():
                try:
                    headers = bearer(self.keys()["management"])
                    response = httpx.get(f"{self.management_url}/models", headers=headers, timeout=2.0)
                    if response.status_code == 200:
                        return
                    last = f"management API answered {response.status_code}"
                except (httpx.HTTPError, KeyFileError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise StackError(f"TorchServe not up after {timeout:.0f}s ({last}); see {self.log_dir}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the frontend and every worker; safe to call when nothing runs."""
        stop_started(self.process, self.pid_file, marker="torchserve", timeout=timeout)


def wait_http(url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``GET url`` until it answers 200; fail early if ``process`` (the server) exits meanwhile."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StackError(f"the server exited with {process.returncode} before {url} answered")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last = f"status {response.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise StackError(f"{url} not ready after {timeout:.0f}s ({last})")


def pid_from(pid_file: Path, *, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process still runs and is ours (``marker`` in its command line): a stale
    file (a SIGKILLed stack, a container volume) may name a recycled pid."""
    try:
        pid = int(pid_file.read_text())
        proc = psutil.Process(pid)
        alive = proc.status() != psutil.STATUS_ZOMBIE and marker in " ".join(proc.cmdline())
    except (FileNotFoundError, ValueError, psutil.Error):
        return None
    return pid if alive else None


def stop_started(process: subprocess.Popen[bytes] | None, pid_file: Path, *, marker: str, timeout: float) -> None:
    """Stop a process group we started (``process``) or whose pid file we find; remove the pid file."""
    pid = process.pid if process is not None else pid_from(pid_file, marker=marker)
    if pid is not None:
        stop_process_group(pid, timeout=timeout)
    if process is not None:
        process.wait(timeout=5)
    pid_file.unlink(missing_ok=True)


def stop_process_group(pid: int, *, timeout: float) -> None:
    """SIGTERM the process group led by ``pid`` (and any stray descendant), then SIGKILL what is left."""
    try:
        leader = psutil.Process(pid)
        procs = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)
        _, alive = psutil.wait_procs(procs, timeout=timeout if sig == signal.SIGTERM else 5)
        procs = alive
        if not procs:
            return
    if procs:
        raise StackError(f"processes {[p.pid for p in procs]} survived SIGKILL")
