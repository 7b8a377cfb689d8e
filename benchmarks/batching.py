"""``python -m benchmarks.batching``: TorchServe's batch size and max batch delay, measured on one archive.

TorchServe alone (no gateway), started by the stack's launcher code with the project's config.properties and key
file. For each cell of a grid of batch sizes x max batch delays the archive is registered through the management API
with that batch size and delay and its own worker count; once every worker is READY, ``wrk`` loads
``/predictions/<model>/<version>`` at each connection count, then the model is unregistered. Per run: requests/s,
p50/p90/p99 latency, errors and the CPU seconds of TorchServe's whole process tree (Java frontend + workers) per
answered request. What TorchServe says it serves (describe-model) is recorded with each cell; a cell served with
other values than it asked for stops the run.

    .venv/bin/python -m benchmarks.batching --archive model_store/cola-1.0.mar \\
        --record docs/results/batching.json --doc docs/performance.md

``--record`` keeps every run as JSON; ``--doc`` replaces the ``batching`` section of a Markdown file with the table
:mod:`benchmarks.batching_report` renders from that record (``make bench-batching`` does both).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import batching_report
from benchmarks.conditions import busy_processes, load_average, machine
from benchmarks.load import ENDPOINTS, LoadError, cola_sentences, require_wrk, review_texts, run_wrk, write_bodies
from benchmarks.servers import ServerError, TorchServeAlone, cpu_seconds, served_archives, store_of, wait_idle
from stack import doc_sections
from stack.management import Management, ManagementError
from torchserve_protocol.layout import default_model_store
from training.tasks import default_data_dir

TEXTS = {"cola": cola_sentences, "sentiment": review_texts}
SINGLE_TEXT_ENDPOINT = {"cola": ENDPOINTS["generate"], "sentiment": ENDPOINTS["predict"]}  # one text per request


def int_list(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batching", description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", type=Path, help="the .mar measured (default: the store's default cola version)")
    p.add_argument("--model-store", type=Path, default=default_model_store(), help="where the default archive is")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--texts", choices=sorted(TEXTS), help="the texts sent (default: the archive's model name)")
    p.add_argument("--batch-sizes", type=int_list, default=[1, 4, 8, 16, 32])
    p.add_argument("--delays", type=int_list, default=[2, 10], help="max batch delays, ms")
    p.add_argument("--connections", type=int_list, default=[1, 32], help="wrk connections, one run each per cell")
    p.add_argument("--seconds", type=float, default=8, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=2, help="seconds of discarded load per cell (most connections)")
    p.add_argument("--repeats", type=int, default=1, help="runs per cell and connection count; medians are shown")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for TorchServe and each registration")
    p.add_argument("--record", type=Path, help="write every run here as JSON (make bench-batching: docs/results/)")
    p.add_argument("--doc", type=Path, help="replace this Markdown file's batching section (docs/performance.md)")
    return p


@dataclass(frozen=True)
class ArchiveFacts:
    """What the archive says about itself: its manifest, its model-config.yaml and its training report."""

    path: Path
    model: str
    version: str
    workers: int | None  # minWorkers
    batch_size: int | None
    max_batch_delay_ms: int | None
    base_model: str | None  # from metrics.json, when a training run packaged it
    architecture: str | None  # config.json's model_type

    @classmethod
    def read(cls, path: Path) -> ArchiveFacts:
        with zipfile.ZipFile(path) as mar:
            names = set(mar.namelist())
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
            config = yaml.safe_load(mar.read(manifest["configFile"])) if "configFile" in manifest else {}
            metrics = json.loads(mar.read("metrics.json")) if "metrics.json" in names else {}
            model_config = json.loads(mar.read("config.json")) if "config.json" in names else {}
        base = metrics.get("base") or {}
        return cls(
            path=path,
            model=manifest["modelName"],
            version=manifest["modelVersion"],
            workers=config.get("minWorkers"),
            batch_size=config.get("batchSize"),
            max_batch_delay_ms=config.get("maxBatchDelay"),
            base_model=base.get("upstream") or base.get("name") or metrics.get("base_model"),
            architecture=model_config.get("model_type"),
        )


def described(management: Management, facts: ArchiveFacts) -> dict[str, Any]:
    """TorchServe's own describe-model answer for the registered version."""
    answer: dict[str, Any] = management.request("GET", f"/models/{facts.model}/{facts.version}").json()[0]
    return answer


def wait_workers_ready(management: Management, facts: ArchiveFacts, *, timeout: float) -> dict[str, Any]:
    """Poll describe-model until the archive's workers are all there and READY (a synchronous registration returns
    once they have started, which may be before they have loaded the model); return that answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = described(management, facts)
        workers = answer.get("workers", [])
        enough = len(workers) >= (facts.workers or 1)
        if enough and all(w.get("status") == "READY" for w in workers):
            return answer
        if time.monotonic() > deadline:
            raise ServerError(f"{facts.model} {facts.version}: workers not READY after {timeout:.0f}s: {workers}")
        time.sleep(0.25)


def measure_cell(
    server: TorchServeAlone,
    facts: ArchiveFacts,
    *,
    batch_size: int,
    delay_ms: int,
    bodies: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Register with this cell's batch size and delay, load it at every connection count, unregister."""
    management = server.management()
    registering = time.monotonic()
    management.register(facts.path.name, batch_size=batch_size, max_batch_delay_ms=delay_ms, timeout=args.timeout)
    try:
        answer = wait_workers_ready(management, facts, timeout=args.timeout)
        ready_s = round(time.monotonic() - registering, 1)
        print(f"[batching] batch {batch_size:>2} / {delay_ms:>2} ms: workers READY in {ready_s} s", flush=True)
        served = {
            "batch_size": answer["batchSize"],
            "max_batch_delay_ms": answer["maxBatchDelay"],
            "workers": len(answer["workers"]),
        }
        if (served["batch_size"], served["max_batch_delay_ms"]) != (batch_size, delay_ms):
            raise ServerError(f"asked for batch {batch_size} / {delay_ms} ms, TorchServe serves {served}")
        url = f"{server.ts.inference_url}/predictions/{facts.model}/{facts.version}"
        key = server.inference_key()
        if args.warmup > 0:  # the first requests of new workers pay one-off costs (allocations, code paths)
            run_wrk(url, bodies, connections=max(args.connections), seconds=args.warmup, auth=key)
        runs = []
        for rep in range(args.repeats):
            for connections in args.connections:
                roles = server.roles()
                wait_idle([p for ps in roles.values() for p in ps])  # the last run's backlog is not this run's
                before = {role: cpu_seconds(ps) for role, ps in roles.items()}
                r = run_wrk(url, bodies, connections=connections, seconds=args.seconds, auth=key)
                cpu = {role: round(cpu_seconds(ps) - before[role], 3) for role, ps in roles.items()}
                per_request = sum(cpu.values()) / r.requests * 1000 if r.requests else None  # ms
                runs.append(
                    {"connections": connections, "rep": rep, "rps": round(r.rps, 2), "p50_ms": r.p50_ms,
                     "p90_ms": r.p90_ms, "p99_ms": r.p99_ms, "errors": r.errors, "requests": r.requests,
                     "cpu_s": cpu, "cpu_ms_per_request": None if per_request is None else round(per_request, 3)}
                )  # fmt: skip
                print(
                    f"[batching] batch {batch_size:>2} / {delay_ms:>2} ms  c={connections:<3d} rep {rep + 1}: "
                    f"{r.rps:7.1f} req/s  p50 {r.p50_ms:6.1f}  p99 {r.p99_ms:7.1f} ms  errors {r.errors}  "
                    f"CPU {per_request or 0:.2f} ms/request",
                    flush=True,
                )
    finally:
        management.unregister(facts.model, facts.version)
    return {"batch_size": batch_size, "max_batch_delay_ms": delay_ms, "served": served, "ready_s": ready_s,
            "runs": runs}  # fmt: skip


def chosen_archive(args: argparse.Namespace) -> Path:
    if args.archive is not None:
        return Path(args.archive)
    archives = served_archives(args.model_store)
    if "cola" not in archives:
        raise ServerError(f"no cola archive in {args.model_store}: give --archive (or `make serve` first)")
    return archives["cola"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require_wrk()
        facts = ArchiveFacts.read(chosen_archive(args))
    except (LoadError, ServerError, OSError, KeyError, ValueError) as exc:
        print(f"[batching] error: {exc}", file=sys.stderr)
        return 2
    texts = args.texts or facts.model
    if texts not in TEXTS:
        print(f"[batching] error: no texts for model {facts.model!r}: pass --texts {'|'.join(TEXTS)}", file=sys.stderr)
        return 2
    busy_before, load_before = busy_processes(), load_average()
    if busy_before:
        print(f"[batching] warning: the machine is busy, numbers will be noisy: {busy_before}", flush=True)
    started = dt.datetime.now(dt.UTC)
    cells = []
    with tempfile.TemporaryDirectory(prefix="batching-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = write_bodies(tmp / "bodies.jsonl", TEXTS[texts](args.data_dir), SINGLE_TEXT_ENDPOINT[texts],
                              torchserve=True)  # fmt: skip
        server = TorchServeAlone(store=store_of([facts.path], tmp / "store"), run_dir=tmp / "run")
        try:
            server.start(timeout=args.timeout)
            print(f"[batching] TorchServe up on {server.ts.inference_url}", flush=True)
            for batch_size in args.batch_sizes:
                for delay_ms in args.delays:
                    cells.append(measure_cell(server, facts, batch_size=batch_size, delay_ms=delay_ms,
                                              bodies=bodies, args=args))  # fmt: skip
        except (ServerError, ManagementError, LoadError) as exc:
            server.stop()
            kept = Path(tempfile.mkdtemp(prefix="batching-logs-")) / "logs"  # the run directory goes with tmp
            shutil.copytree(server.run_dir / "logs", kept, dirs_exist_ok=True)
            print(f"[batching] error: {exc}\n[batching] TorchServe's logs: {kept}", file=sys.stderr)
            return 1
        finally:
            server.stop()
    finished = dt.datetime.now(dt.UTC)
    record = {
        "started": f"{started:%Y-%m-%d %H:%M} UTC",
        "minutes": round((finished - started).total_seconds() / 60, 1),
        "command": "python -m benchmarks.batching " + shlex.join(sys.argv[1:] if argv is None else argv),
        "machine": {k: v for k, v in machine().items() if k in ("cpu", "cores", "isa")},
        "loadavg_before": load_before,
        "busy": sorted(set(busy_before + busy_processes())),
        "archive": facts.path.name,
        "model": facts.model,
        "version": facts.version,
        "base_model": facts.base_model,
        "architecture": facts.architecture,
        "archive_setting": {
            "batch_size": facts.batch_size,
            "max_batch_delay_ms": facts.max_batch_delay_ms,
            "workers": facts.workers,
        },
        "texts": texts,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "connections": args.connections,
        "cells": cells,
    }
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(record, indent=1) + "\n")
        print(f"[batching] wrote {args.record}", flush=True)
    section = batching_report.render(record)
    print(section, end="", flush=True)
    if args.doc:
        args.doc.write_text(doc_sections.replaced(args.doc.read_text(), batching_report.SECTION, section))
        print(f"[batching] wrote the {batching_report.SECTION} section of {args.doc}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
