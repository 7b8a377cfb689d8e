"""Start, watch and stop the gateway process (``python -m gateway``) next to a :class:`TorchServe`."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stack.torchserve import StackError, TorchServe, pid_from, stop_started, wait_http
from torchserve_protocol.layout import REPO


def same_setting(name: str, a: str, b: str) -> bool:
    if name.endswith("_URL"):
        return a.rstrip("/") == b.rstrip("/")
    return (REPO / a).resolve() == (REPO / b).resolve()  # the gateway takes a relative key file from the repository


@dataclass
class Gateway:
    torchserve: TorchServe
    host: str = "127.0.0.1"
    port: int = 8000
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.torchserve.run_dir / "gateway.pid"

    def upstream(self) -> dict[str, str]:
        """The gateway settings that point it at this TorchServe (the launcher sets them)."""
        return {
            "GATEWAY_INFERENCE_URL": self.torchserve.inference_url,
            "GATEWAY_MANAGEMENT_URL": self.torchserve.management_url,
            "GATEWAY_KEY_FILE": str(self.torchserve.key_file),
        }

    def check_environment(self) -> None:
        """Refuse a user's ``GATEWAY_INFERENCE_URL``/``GATEWAY_MANAGEMENT_URL``/``GATEWAY_KEY_FILE`` that differs from
        the TorchServe this launcher starts (it would be silently replaced otherwise); the same value is fine."""
        for name, ours in self.upstream().items():
            theirs = os.environ.get(name)
            if theirs is None or same_setting(name, theirs, ours):
                continue
            how = "TS_HOST / TS_PORTS (or --host / --ts-ports)" if name.endswith("_URL") else "RUN_DIR (or --run-dir)"
            raise StackError(
                f"{name}={theirs} is set, but the launcher starts TorchServe with {name}={ours}: unset {name} (the "
                f"launcher points the gateway at its TorchServe; move that with {how}), or run the gateway alone "
                "with `python -m gateway` to use your own TorchServe"
            )

    def env(self) -> dict[str, str]:
        self.check_environment()
        env = dict(os.environ)
        env.update(
            self.upstream(),
            GATEWAY_MODEL_STORE=str(self.torchserve.model_store),  # read only: canary split and GET /models
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> None:
        if self.running_pid() is not None:
            raise StackError(f"gateway already running (pid file {self.pid_file})")
        log_dir = self.torchserve.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        out = (log_dir / "gateway.log").open("ab")
        cmd = [sys.executable, "-m", "gateway", "--host", self.host, "--port", str(self.port)]
        self.process = subprocess.Popen(
            cmd, cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        out.close()
        self.pid_file.write_text(str(self.process.pid))

    def running_pid(self) -> int | None:
        return pid_from(self.pid_file, marker="gateway")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``GET /ready`` (TorchServe reachable, every model READY) until 200."""
        try:
            wait_http(f"{self.url}/ready", timeout=timeout, process=self.process)
        except StackError as exc:
            raise StackError(f"gateway: {exc}; see {self.torchserve.log_dir}") from None

    def stop(self, timeout: float = 15.0) -> None:
        stop_started(self.process, self.pid_file, marker="gateway", timeout=timeout)
