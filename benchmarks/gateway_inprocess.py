"""The gateway app's own CPU per ``/generate``, in process: the ASGI app called directly (middlewares, routing,
validation, the TorchServe client, the contract, metrics), TorchServe an ``httpx.MockTransport`` answering fixed
bytes; no HTTP server, no socket. Finer than :mod:`benchmarks.gateway_cpu` for changes of a few microseconds.

    .venv/bin/python -m benchmarks.gateway_inprocess --tree /tmp/before --tree . --rounds 6

Each round starts one process per ``--tree`` (a checkout), in turn; a process reports the least CPU time per request
over 10 chunks (the chunks the machine's other work disturbed least). The medians over rounds are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ANSWER = b'{"label": "acceptable", "probabilities": {"unacceptable": 0.1873, "acceptable": 0.8127}}'
BODY = b'{"passage": "The boy that I saw yesterday is here."}'
CHUNKS = 10


async def measure(requests: int) -> float:
    """Microseconds of CPU per request, the least over :data:`CHUNKS` chunks (run inside the tree's process)."""
    import httpx
    from starlette.types import Message

    from gateway.app import create_app
    from gateway.settings import Settings

    key_file = Path(tempfile.mkdtemp()) / "key_file.json"
    keys = {kind: {"key": kind, "expiration time": "2999-01-01T00:00:00Z"} for kind in ("management", "inference")}
    key_file.write_text(json.dumps(keys))
    headers = {"Content-Type": "application/json", "X-Model-Version": "1.0"}
    upstream = httpx.MockTransport(lambda request: httpx.Response(200, content=ANSWER, headers=headers))
    app = create_app(Settings(key_file=key_file), transport=upstream)
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/generate", "raw_path": b"/generate", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    statuses: set[int] = set()

    async def receive() -> Message:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    async with app.router.lifespan_context(app) as state:
        one = {**scope, "state": dict(state or {})}
        for _ in range(300):  # warm-up
            await app(dict(one), receive, send)
        chunks = []
        for _ in range(CHUNKS):
            started = time.process_time()
            for _ in range(requests // CHUNKS):
                await app(dict(one), receive, send)
            chunks.append((time.process_time() - started) / (requests // CHUNKS) * 1e6)
    if statuses != {200}:
        raise RuntimeError(f"the app answered {sorted(statuses)}")
    return min(chunks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, action="append", help="a checkout whose gateway is measured (repeat)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=4000, help="requests per process")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # inside a tree's process
    args = parser.parse_args()
    if args.one:
        print(f"{asyncio.run(measure(args.requests)):.1f}")
        return 0
    trees = [path.resolve() for path in args.tree or [Path.cwd()]]
    here = Path(__file__).resolve().parent.parent
    results: dict[Path, list[float]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            cmd = [sys.executable, "-m", "benchmarks.gateway_inprocess", "--one", "--requests", str(args.requests)]
            env = {"PYTHONPATH": f"{tree}:{here}"}  # the tree's gateway first, this checkout's benchmarks after
            out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=True).stdout
            results[tree].append(float(out.split()[-1]))
    for tree, values in results.items():
        runs = ", ".join(f"{v:.0f}" for v in sorted(values))
        print(f"median CPU per /generate in process, {tree}: {statistics.median(values):.0f} us ({runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
