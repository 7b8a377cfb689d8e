"""Start, watch and stop the edge: Debian's nginx in front of the gateway (``edge/nginx.conf.template``).

The edge holds the client-facing bounds (docs/gateway.md, "The edge"). Locally it runs unprivileged from the run
directory: its config, pid file, temp files, internal socket and log all live in ``<run dir>/edge`` and
``<run dir>/logs``; it runs in its own process group, like TorchServe and the gateway. The same template is rendered
by ``envsubst`` in the container (edge/entrypoint.sh), so compose, Kubernetes and local runs hold the same bounds.
"""

from __future__ import annotations

import os
import shutil
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stack.torchserve import StackError, pid_from, stop_started, wait_http
from torchserve_protocol.layout import REPO

TEMPLATE = REPO / "edge" / "nginx.conf.template"
PLACEHOLDERS = ("EDGE_LISTEN", "EDGE_UPSTREAM", "EDGE_DIR", "EDGE_ERROR_LOG", "EDGE_USER")


class EdgeTemplate(string.Template):
    """Only ``${EDGE_*}`` are ours; nginx's own ``$variables`` stay as they are."""

    idpattern = r"(?-i:EDGE_[A-Z0-9_]+)"


def user_directive() -> str:
    """As root, nginx drops its workers to ``nobody``, who cannot reach the internal socket in the launcher's 0700
    folder: keep them the launcher's user (as TorchServe and the gateway run). Unprivileged, nothing to say."""
    return "user root root;" if os.geteuid() == 0 else ""


def render(
    *, listen: str, upstream: str, directory: Path, error_log: str, user: str = "", template: Path = TEMPLATE
) -> str:
    """The template with every placeholder filled; fails on one left over (a new placeholder nobody fills)."""
    values = {"EDGE_LISTEN": listen, "EDGE_UPSTREAM": upstream, "EDGE_DIR": str(directory),
              "EDGE_ERROR_LOG": error_log, "EDGE_USER": user}  # fmt: skip
    text = EdgeTemplate(template.read_text()).safe_substitute(values)
    if "${EDGE_" in text:
        raise StackError(f"{template}: a placeholder is not filled: {text[text.index('${EDGE_') :][:40]}")
    return text


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)
    if found is None:
        raise StackError("the edge needs nginx: `make` installs it (apt-get install -y nginx libnginx-mod-stream)")
    return found


@dataclass
class Edge:
    """nginx listening on ``host:port``, proxying to the gateway at ``upstream`` (``host:port``)."""

    run_dir: Path
    upstream: str
    host: str = "127.0.0.1"
    port: int = 8000
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def directory(self) -> Path:
        return self.run_dir / "edge"

    @property
    def config(self) -> Path:
        return self.directory / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "edge.pid"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)  # the internal socket and temp files: this user only
        self.log_dir.mkdir(parents=True, exist_ok=True)
        text = render(
            listen=f"{self.host}:{self.port}",
            upstream=self.upstream,
            directory=self.directory.resolve(),
            error_log=str((self.log_dir / "edge.log").resolve()),
            user=user_directive(),
        )
        self.config.write_text(text)
        (self.directory / "http.sock").unlink(missing_ok=True)  # left by a killed nginx: it would not bind again
        return self.config

    def command(self) -> list[str]:
        # -p: nginx's prefix (relative paths, its startup error log); -e: the error log before the config is read
        directory = str(self.directory.resolve())
        error_log = str((self.log_dir / "edge.log").resolve())
        return [nginx_binary(), "-p", directory, "-e", error_log, "-c", str(self.config.resolve())]

    def check(self) -> None:
        """``nginx -t`` on the rendered config: a bad config fails here with nginx's own words."""
        self.write_config()
        done = subprocess.run([*self.command(), "-t", "-q"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"the edge's config does not load ({self.config}): {done.stderr.strip()}")

    def start(self) -> None:
        if self.running_pid() is not None:
            raise StackError(f"the edge already runs (pid file {self.pid_file})")
        self.check()
        out = (self.log_dir / "edge.out").open("ab")
        self.process = subprocess.Popen(
            self.command(), cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env={"PATH": os.defpath},  # nginx needs nothing of ours
        )  # fmt: skip
        out.close()
        self.pid_file.write_text(str(self.process.pid))

    def running_pid(self) -> int | None:
        return pid_from(self.pid_file, marker="nginx")

    def wait_up(self, *, path: str = "/health", timeout: float = 30.0) -> None:
        """Poll ``GET path`` through the edge (the gateway behind it answering) until 200."""
        try:
            wait_http(f"{self.url}{path}", timeout=timeout, process=self.process)
        except StackError as exc:
            raise StackError(f"edge: {exc}; see {self.log_dir / 'edge.log'}") from None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (nginx's fast shutdown) to its process group: master and worker; safe when nothing runs."""
        stop_started(self.process, self.pid_file, marker="nginx", timeout=timeout)
