"""Start, watch and stop the gateway process (``python -m gateway``) next to a :class:`TorchServe`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from stack.torchserve import REPO, StackError, TorchServe, pid_from, stop_started


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

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GATEWAY_INFERENCE_URL=self.torchserve.inference_url,
            GATEWAY_MANAGEMENT_URL=self.torchserve.management_url,
            GATEWAY_KEY_FILE=str(self.torchserve.key_file),
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
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StackError(f"gateway exited with {self.process.returncode}; see {self.torchserve.log_dir}")
            try:
                response = httpx.get(f"{self.url}/ready", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"/ready answered {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise StackError(f"gateway not ready after {timeout:.0f}s ({last}); see {self.torchserve.log_dir}")

    def stop(self, timeout: float = 15.0) -> None:
        stop_started(self.process, self.pid_file, marker="gateway", timeout=timeout)
