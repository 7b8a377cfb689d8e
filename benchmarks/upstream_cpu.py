"""The CPU of the gateway's call to TorchServe alone: one POST of a CoLA-sized text to :mod:`benchmarks.stand_in`,
``--in-flight`` at a time, through each way the gateway has had of making it:

* ``httpx``: an ``httpx.Request`` handed to the aiohttp transport, an ``httpx.Response`` back (gateway.wire.HttpxWire
  over it: what the gateway did before it had its own wire, and how its calls with query parameters still go);
* ``pool``: the gateway's own pool, :class:`gateway.upstream_pool.UpstreamPool` (what it does now).

(Before the pool, the second way was the aiohttp transport's own ``exchange``: docs/performance.md, section 3b.)

    .venv/bin/python -m benchmarks.upstream_cpu [--chunks 8 --requests 2000]

The ways alternate chunk by chunk in one process, so the machine's other work falls on both alike; each reports the
least CPU time per call over its chunks (the chunks the other work disturbed least).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import uvloop

from benchmarks.gateway_cpu import started
from benchmarks.servers import free_ports
from gateway.aiohttp_transport import AiohttpTransport
from gateway.upstream_pool import UpstreamPool
from gateway.wire import HttpxWire, Wire
from torchserve_protocol.layout import REPO

BODY = b'{"text": "The boy that I saw yesterday is here."}'
HEADERS = {"Content-Type": "application/json", "X-Request-ID": "0123456789abcdef0123456789abcdef"}
TIMEOUTS = httpx.Timeout(connect=2.0, read=35.0, write=5.0, pool=2.0).as_dict()


async def measure(url: str, *, chunks: int, requests: int, in_flight: int) -> dict[str, list[float]]:
    """Microseconds of CPU per call for each way, one figure per chunk."""
    transport = AiohttpTransport(limits=httpx.Limits(max_connections=in_flight))
    ways: dict[str, Wire] = {"httpx": HttpxWire(transport), "pool": UpstreamPool(max_connections=in_flight)}
    per_call: dict[str, list[float]] = {way: [] for way in ways}

    async def calls(wire: Wire, count: int) -> None:
        for _ in range(count):
            answer = await wire.exchange("POST", url, HEADERS, BODY, TIMEOUTS)
            if answer.status_code != 200 or not answer.headers.get("X-Model-Version"):
                raise RuntimeError(f"the stand-in answered {answer.status_code}")

    async def chunk(wire: Wire, total: int) -> float:
        started_at = time.process_time()
        await asyncio.gather(*(calls(wire, total // in_flight) for _ in range(in_flight)))
        return (time.process_time() - started_at) / (total // in_flight * in_flight) * 1e6

    try:
        for wire in ways.values():
            await chunk(wire, in_flight * 10)  # warm-up: connections open, code paths hot
        for _ in range(chunks):
            for way, wire in ways.items():
                per_call[way].append(await chunk(wire, requests))
    finally:
        for wire in ways.values():
            await wire.aclose()
        await transport.aclose()
    return per_call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000, help="calls per chunk")
    parser.add_argument("--in-flight", type=int, default=32)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        port = free_ports(1)[0]
        cmd = [sys.executable, "-m", "benchmarks.stand_in", "--port", str(port), "--key-file", str(Path(tmp) / "k")]
        stack.enter_context(started(cmd, cwd=REPO, env=dict(os.environ), ready_url=None))
        url = f"http://127.0.0.1:{port}/predictions/cola"
        deadline = time.monotonic() + 30
        while True:  # the stand-in listens once its event loop runs
            try:
                httpx.post(url, content=BODY, timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        per_call = uvloop.run(measure(url, chunks=args.chunks, requests=args.requests, in_flight=args.in_flight))
    for way, values in per_call.items():
        spread = ", ".join(f"{v:.0f}" for v in sorted(values))
        print(f"{way}: least {min(values):.0f} us, median {statistics.median(values):.0f} us per call ({spread})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
