"""The gateway's own CPU per proxied request: ``python -m gateway`` in front of TorchServe (or a stand-in),
``/generate`` with CoLA dev sentences under ``wrk``; CPU seconds of the gateway process divided by the requests it
answered.

    .venv/bin/python -m benchmarks.gateway_cpu --inference-url http://127.0.0.1:8080 \\
        --management-url http://127.0.0.1:8081 --key-file run/torchserve/key_file.json [--seconds 10 --runs 3]
    .venv/bin/python -m benchmarks.gateway_cpu --stand-in --tree /tmp/before --tree . --runs 6
    .venv/bin/python -m benchmarks.gateway_cpu ... --tree /tmp/before --tree . --connections 8 --connections 32

Against ``make start``'s TorchServe the defaults fit. ``--stand-in`` puts :mod:`benchmarks.stand_in` behind the
gateway instead (the model costs nothing, the machine is left to the gateway). Each ``--tree`` is a checkout whose
gateway is measured (default: this one); with several, their runs alternate, so that the load of a shared machine
falls on all of them alike. Each ``--connections`` value (repeatable) is measured in every run, for every tree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.load import ENDPOINTS, cola_sentences, run_wrk, write_bodies
from benchmarks.servers import cpu_seconds, free_ports, tree, wait_idle
from stack.torchserve import stop_process_group, wait_http
from torchserve_protocol.layout import REPO, key_file_in


@contextlib.contextmanager
def started(cmd: list[str], *, cwd: Path, env: dict[str, str], ready_url: str | None) -> Iterator[int]:
    """A process group running ``cmd``; its pid once ``ready_url`` answers (or at once); stopped on exit."""
    process = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True)
    try:
        if ready_url is not None:
            wait_http(ready_url, timeout=30, process=process)
        yield process.pid
    finally:
        stop_process_group(process.pid, timeout=10)
        process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--key-file", type=Path, default=key_file_in(REPO / "run"))
    parser.add_argument("--stand-in", action="store_true", help="benchmarks.stand_in instead of TorchServe")
    parser.add_argument("--tree", type=Path, action="append", help="a checkout whose gateway is measured (repeat)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", REPO / "data")))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, action="append", help="wrk connections (repeat; default 32)")
    args = parser.parse_args()
    trees = [path.resolve() for path in args.tree or [REPO]]
    clients = args.connections or [32]
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if args.stand_in:
            port, key_file = free_ports(1)[0], Path(tmp) / "key_file.json"
            cmd = [sys.executable, "-m", "benchmarks.stand_in", "--port", str(port), "--key-file", str(key_file)]
            stack.enter_context(started(cmd, cwd=REPO, env=env, ready_url=None))
            args.inference_url = args.management_url = f"http://127.0.0.1:{port}"
            args.key_file = key_file
        env.update(GATEWAY_INFERENCE_URL=args.inference_url, GATEWAY_MANAGEMENT_URL=args.management_url,
                   GATEWAY_KEY_FILE=str(args.key_file.resolve()))  # fmt: skip
        bodies = write_bodies(Path(tmp) / "bodies", cola_sentences(args.data_dir), ENDPOINTS["generate"],
                              torchserve=False)  # fmt: skip
        urls, procs = {}, {}
        for where, port in zip(trees, free_ports(len(trees)), strict=True):
            urls[where] = url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "gateway", "--port", str(port), "--log-level", "warning"]
            gateway = stack.enter_context(
                started(cmd, cwd=where, env={**env, "PYTHONPATH": str(where)}, ready_url=f"{url}/health")
            )
            procs[where] = tree(gateway)
            run_wrk(f"{url}/generate", bodies, connections=max(clients), seconds=2)  # warm-up
        cells: dict[tuple[Path, int], list[tuple[float, float, float, float]]] = {}
        for _ in range(args.runs):
            for c in clients:
                for where in trees:
                    wait_idle(procs[where])
                    before = cpu_seconds(procs[where])
                    result = run_wrk(f"{urls[where]}/generate", bodies, connections=c, seconds=args.seconds)
                    ms = (cpu_seconds(procs[where]) - before) / max(result.requests, 1) * 1000
                    cells.setdefault((where, c), []).append((ms, result.rps, result.p50_ms, result.p99_ms))
                    latency = f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, errors {result.errors}"
                    print(f"{where} c={c}: gateway CPU {ms:.3f} ms/request, {result.rps:.0f} requests/s, {latency}",
                          flush=True)  # fmt: skip
    for (where, c), values in cells.items():
        ms, rps, p50, p99 = (statistics.median(column) for column in zip(*values, strict=True))
        runs = ", ".join(f"{v[0]:.3f}" for v in values)
        print(f"median /generate, {where}, {c} clients: {rps:.1f} requests/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"gateway CPU {ms:.3f} ms/request ({runs})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
