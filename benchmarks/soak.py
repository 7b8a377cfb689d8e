"""A bounded soak against a running stack: a steady request rate for a fixed time, then a report.

    .venv/bin/python -m benchmarks.soak --rate 20 --duration 300            # make start first
    .venv/bin/python -m benchmarks.soak --rate 20 --duration 300 --write-doc # also update docs/reliability.md

Open loop: one request is started every 1/rate seconds whatever the previous ones do (distinct CoLA sentences to
/generate and app reviews to /predict, 2:2, and one /predict/batch of 4 reviews in every 5 requests), so a slow
server shows up as latency and errors, not as a lower rate. Reports every non-200 answer, latency percentiles per
minute, and the RSS of every process of the stack (gateway, TorchServe's Java frontend, each Python worker) at the
start, after every minute and at the end, so warm-up (growth that stops) can be told from a leak (growth that goes
on). Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from benchmarks.load import cola_sentences, review_texts
from stack import doc_sections
from torchserve_protocol.layout import REPO
from training.tasks import default_data_dir

DOC = REPO / "docs" / "reliability.md"
SECTION = "soak"  # docs/reliability.md's generated section (stack.doc_sections)
BEGIN, END = doc_sections.markers(SECTION)
MIX = ("/generate", "/predict", "/generate", "/predict", "/predict/batch")  # 2 : 2 : 1, batches of 4 reviews


def requests_from(data_dir: Path) -> list[tuple[str, dict[str, object]]]:
    """Distinct real texts (CoLA dev sentences, app reviews), cycled through the mix of endpoints."""
    sentences, reviews = cola_sentences(data_dir), review_texts(data_dir)
    out: list[tuple[str, dict[str, object]]] = []
    for i in range(max(len(sentences), len(reviews))):
        path = MIX[i % len(MIX)]
        if path == "/generate":
            out.append((path, {"passage": sentences[i % len(sentences)]}))
        elif path == "/predict":
            out.append((path, {"text": reviews[i % len(reviews)]}))
        else:
            out.append((path, {"texts": [reviews[(i + k) % len(reviews)] for k in range(4)]}))
    return out


@dataclass
class Result:
    started: float
    status: int  # 0: transport error
    seconds: float


@dataclass
class Soak:
    url: str
    rate: float
    duration: float
    results: list[Result] = field(default_factory=list)
    requests: list[tuple[str, dict[str, object]]] = field(default_factory=list)
    procs: dict[str, psutil.Process] = field(default_factory=dict)
    rss_by_minute: list[dict[str, float | None]] = field(default_factory=list)

    async def sample_memory(self) -> None:
        while True:
            await asyncio.sleep(60)
            self.rss_by_minute.append(rss_mib(self.procs))

    async def one(self, client: httpx.AsyncClient, i: int, t0: float) -> None:
        path, body = self.requests[i % len(self.requests)]
        started = time.monotonic()
        try:
            status = (await client.post(path, json=body)).status_code
        except httpx.HTTPError:
            status = 0
        self.results.append(Result(started - t0, status, time.monotonic() - started))

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits) as client:
            t0 = time.monotonic()
            tasks = []
            sampler = asyncio.create_task(self.sample_memory())
            for i in range(int(self.rate * self.duration)):
                await asyncio.sleep(max(0.0, t0 + i / self.rate - time.monotonic()))
                tasks.append(asyncio.create_task(self.one(client, i, t0)))
            await asyncio.gather(*tasks)
            sampler.cancel()


def stack_processes(run_dir: Path) -> dict[str, psutil.Process]:
    """Gateway, TorchServe frontend and workers, from the pid files under ``run_dir`` (else by command line)."""
    found: dict[str, psutil.Process] = {}
    for name in ("gateway", "torchserve"):
        try:
            proc = psutil.Process(int((run_dir / f"{name}.pid").read_text()))
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            continue
        for p in [proc, *proc.children(recursive=True)]:
            found[label(p, name)] = p
    if not found:
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "org.pytorch.serve.ModelServer" in cmd or "model_service_worker" in cmd or "-m gateway" in cmd:
                found[label(p, "stack")] = p
    return found


def label(proc: psutil.Process, default: str) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return f"{default} {proc.pid}"
    if "org.pytorch.serve.ModelServer" in cmd:
        return f"TorchServe java {proc.pid}"
    if "model_service_worker" in cmd:
        return f"worker {proc.pid}"
    if "gateway" in cmd:
        return f"gateway {proc.pid}"
    return f"{default} ({proc.name()}) {proc.pid}"


def rss_mib(procs: dict[str, psutil.Process]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, proc in procs.items():
        try:
            out[name] = proc.memory_info().rss / 2**20
        except psutil.Error:
            out[name] = None  # gone (a worker restarted?): reported as such
    return out


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(soak: Soak, start_rss: dict[str, float | None], end_rss: dict[str, float | None], wall: float) -> str:
    results = sorted(soak.results, key=lambda r: r.started)
    statuses = Counter(r.status for r in results)
    errors = sum(n for s, n in statuses.items() if s != 200)
    lines = [
        f"Soak: {soak.url}, {soak.rate:g} requests/s for {soak.duration:g} s "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); wall {wall:.0f} s.",
        "",
        f"- requests: {len(results)}, answered/s {len(results) / wall:.1f}; statuses {dict(sorted(statuses.items()))};"
        f" **errors: {errors}**",
        "",
        "| minute | requests | p50 ms | p95 ms | p99 ms | max ms | non-200 |",
        "|---|---|---|---|---|---|---|",
    ]
    minutes = int(max(r.started for r in results) // 60) + 1 if results else 0
    for m in range(minutes):
        window = [r for r in results if m * 60 <= r.started < (m + 1) * 60]
        if not window:
            continue
        ms = [r.seconds * 1000 for r in window]
        bad = sum(r.status != 200 for r in window)
        lines.append(
            f"| {m + 1} | {len(window)} | {pct(ms, 50):.0f} | {pct(ms, 95):.0f} | {pct(ms, 99):.0f} | "
            f"{max(ms):.0f} | {bad} |"
        )
    samples = [start_rss, *soak.rss_by_minute, end_rss]
    heads = ["start", *(f"min {m + 1}" for m in range(len(soak.rss_by_minute))), "end"]
    lines += ["", f"| process (RSS MiB) | {' | '.join(heads)} |", "|---|" + "---|" * len(heads)]
    for name in sorted(set().union(*samples)):
        values = [sample.get(name) for sample in samples]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.0f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def write_doc(text: str) -> None:
    DOC.write_text(doc_sections.replaced(DOC.read_text(), SECTION, text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (steady, open loop)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds (bounded; default 5 minutes)")
    parser.add_argument("--run-dir", type=Path, default=REPO / "run", help="where the stack's pid files are")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--write-doc", action="store_true", help=f"replace the soak section of {DOC.name}")
    args = parser.parse_args(argv)
    if httpx.get(f"{args.url}/ready", timeout=10).status_code != 200:
        print(f"error: {args.url}/ready is not 200: start the stack first (make start)", file=sys.stderr)
        return 2
    procs = stack_processes(args.run_dir)
    start_rss = rss_mib(procs)
    soak = Soak(args.url, args.rate, args.duration, requests=requests_from(args.data_dir), procs=procs)
    started = time.monotonic()
    asyncio.run(soak.run())
    wall = time.monotonic() - started
    procs.update({k: v for k, v in stack_processes(args.run_dir).items() if k not in procs})  # restarted workers
    text = report(soak, start_rss, rss_mib(procs), wall)
    print(text)
    if args.write_doc:
        write_doc(text)
    return 1 if any(r.status != 200 for r in soak.results) else 0


if __name__ == "__main__":
    sys.exit(main())
