"""Which HTTP server runs the gateway: each candidate serves the real app (no TorchServe behind it) and is measured
for its limits (a never-ending header: how many bytes it reads before answering, and with what) and its CPU per
request (``GET /health`` under ``wrk``, CPU seconds of the server's process tree divided by requests answered).

    .venv/bin/python -m benchmarks.http_servers [--seconds 8] [--connections 32] [--extra /tmp/extra]

``--extra`` is a ``pip install --target`` folder holding granian and hypercorn (they are not project dependencies).
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.servers import cpu_seconds, free_ports, tree, wait_idle
from stack.torchserve import stop_process_group, wait_http
from torchserve_protocol.layout import REPO

APP = "gateway.app:create_app"
FLOOD_MAX = 4 * 1_048_576


def candidates(port: int, extra: Path) -> dict[str, list[str]]:
    py = sys.executable
    uv = [py, "-m", "uvicorn", "--factory", APP, "--port", str(port), "--loop", "uvloop", "--no-access-log"]
    return {
        "uvicorn + httptools": [*uv, "--http", "httptools"],
        "uvicorn + h11": [*uv, "--http", "h11"],
        "python -m gateway (uvicorn + h11, its options)": [py, "-m", "gateway", "--port", str(port)],
        "granian (Rust, asgi)": [
            str(extra / "bin" / "granian"), "--interface", "asgi", "--factory", "--port", str(port), "--loop",
            "uvloop", "--no-access-log", "--http", "1", APP,
        ],
        "hypercorn (h11)": [str(extra / "bin" / "hypercorn"), "--bind", f"127.0.0.1:{port}", "-k", "uvloop",
                            f"{APP}()"],
    }  # fmt: skip


def flood(port: int) -> str:
    """Send ``X-Pad: aaaa...`` 4 KiB at a time until the server answers or closes (at most 4 MiB)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sent = 0
        started = time.monotonic()
        try:
            while sent < FLOOD_MAX and not select.select([sock], [], [], 0.001)[0]:
                sock.sendall(b"a" * 4096)
                sent += 4096
            sock.settimeout(2)
            answer = sock.recv(4096)
        except OSError as exc:
            answer = f"({type(exc).__name__})".encode()
        took = time.monotonic() - started
    status = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace") or "(closed, no answer)"
    if sent >= FLOOD_MAX:
        return f"no answer after {FLOOD_MAX // 1_048_576} MiB ({took:.1f} s)"
    body = answer.partition(b"\r\n\r\n")[2][:80].decode("latin-1", "replace")
    return f"{status} after {sent // 1024} KiB; body {body!r}"


def cpu_per_request(port: int, procs: list[psutil.Process], *, seconds: int, connections: int) -> tuple[float, float]:
    before = cpu_seconds(procs)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"http://127.0.0.1:{port}/health"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    used = cpu_seconds(procs) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return used / requests * 1000, requests / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--extra", type=Path, default=Path("/tmp/extra"))
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{args.extra}", "GATEWAY_KEY_FILE": "/nonexistent/key_file.json"}
    print("| server | never-ending header | CPU per request | requests/s |\n|---|---|---:|---:|")
    for name, cmd in candidates(free_ports(1)[0], args.extra).items():
        if cmd[0].startswith(str(args.extra)) and not Path(cmd[0]).exists():
            print(f"| {name} | (not installed in {args.extra}) | | |", flush=True)
            continue
        port = int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else int(cmd[cmd.index("--bind") + 1][10:])
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout=30, process=process)
            procs = tree(process.pid)
            flooded = flood(port)
            wait_idle(procs)
            ms, rps = cpu_per_request(port, procs, seconds=args.seconds, connections=args.connections)
            print(f"| {name} | {flooded} | {ms:.3f} ms | {rps:.0f} |", flush=True)
        finally:
            stop_process_group(process.pid, timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
