"""The gateway's own CPU per proxied request: ``python -m gateway`` in front of a running TorchServe, ``/generate``
with CoLA dev sentences under ``wrk``; CPU seconds of the gateway process divided by the requests it answered.

    .venv/bin/python -m benchmarks.gateway_cpu --inference-url http://127.0.0.1:8080 \\
        --management-url http://127.0.0.1:8081 --key-file run/torchserve/key_file.json [--seconds 10 --runs 3]

Against ``make start``'s TorchServe the defaults fit. With tiny test models behind it the model costs almost nothing,
so the gateway's share is what is left to measure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.load import ENDPOINTS, cola_sentences, run_wrk, write_bodies
from benchmarks.servers import cpu_seconds, free_ports, tree, wait_idle
from stack.torchserve import stop_process_group, wait_http
from torchserve_protocol.layout import REPO, key_file_in


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inference-url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--key-file", type=Path, default=key_file_in(REPO / "run"))
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", REPO.parent / "shared/data")))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    port = free_ports(1)[0]
    env = {
        **os.environ,
        "GATEWAY_INFERENCE_URL": args.inference_url,
        "GATEWAY_MANAGEMENT_URL": args.management_url,
        "GATEWAY_KEY_FILE": str(args.key_file.resolve()),
    }
    cmd = [sys.executable, "-m", "gateway", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", timeout=30, process=process)
        procs = tree(process.pid)
        with tempfile.TemporaryDirectory() as tmp:
            bodies = write_bodies(Path(tmp) / "bodies", cola_sentences(args.data_dir), ENDPOINTS["generate"],
                                  torchserve=False)  # fmt: skip
            run_wrk(f"{url}/generate", bodies, connections=args.connections, seconds=2)  # warm-up
            per_request = []
            for _ in range(args.runs):
                wait_idle(procs)
                before = cpu_seconds(procs)
                result = run_wrk(f"{url}/generate", bodies, connections=args.connections, seconds=args.seconds)
                ms = (cpu_seconds(procs) - before) / max(result.requests, 1) * 1000
                per_request.append(ms)
                print(f"gateway CPU {ms:.3f} ms/request, {result.rps:.0f} requests/s, p50 {result.p50_ms:.1f} ms, "
                      f"p99 {result.p99_ms:.1f} ms, errors {result.errors}", flush=True)  # fmt: skip
        print(f"median gateway CPU per /generate: {statistics.median(per_request):.3f} ms")
    finally:
        stop_process_group(process.pid, timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
