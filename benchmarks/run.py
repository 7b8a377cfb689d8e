"""``python -m benchmarks.run``: naive baseline (one thread, all threads) vs a peer framework (BentoML) vs TorchServe
direct vs the full stack, side by side, same weights and same sentences; the in-process ceiling; a Markdown report
and a PNG plot into docs/.

Quick check: ``python -m benchmarks.run --duration 5 --repeats 1 --concurrency 8 --smoke``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import ceiling, report
from benchmarks.conditions import busy_processes, load_average, machine
from benchmarks.load import ENDPOINTS, LoadError, cola_sentences, require_wrk, review_texts, run_wrk, write_bodies
from benchmarks.servers import (
    PEER_VENV,
    Naive,
    Peer,
    ServerError,
    Stack,
    cpu_seconds,
    extract,
    rss_mib,
    served_archives,
    store_of,
    wait_idle,
)
from stack import doc_sections
from torchserve_protocol.layout import REPO
from training.tasks import default_data_dir

CONFIGS = ("naive", "naive-threads", "bentoml", "torchserve", "gateway")


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-store", type=Path, default=Path(os.environ.get("MODEL_STORE", REPO / "model_store")))
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--duration", type=float, default=10, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=3, help="seconds of discarded load per configuration x endpoint")
    p.add_argument("--repeats", type=int, default=3, help="repetitions per cell; medians are reported")
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in csv_list(v)], default=[1, 8, 32, 64])
    p.add_argument("--configs", type=csv_list, default=list(CONFIGS), help=f"some of {','.join(CONFIGS)}")
    p.add_argument("--endpoints", type=csv_list, default=list(ENDPOINTS), help=f"some of {','.join(ENDPOINTS)}")
    p.add_argument("--ceiling-seconds", type=float, default=10, help="seconds per ceiling repetition (0: skip)")
    p.add_argument("--ceiling-batch", type=int, default=8)
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for a configuration to be ready")
    p.add_argument(
        "--peer-python", type=Path, default=PEER_VENV / "bin" / "python", help="the peer's virtualenv (make peer)"
    )
    p.add_argument(
        "--peer-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="BentoML model-service processes (default: one per core, as the stack runs one single-threaded "
        "TorchServe worker per core and model)",
    )
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "benchmarks.png")
    p.add_argument("--json", type=Path, help="also write every raw run here")
    p.add_argument(
        "--readme", type=Path, help="also replace this README's bench:summary section (make bench: README.md)"
    )
    p.add_argument("--record", type=Path, help="also write the summary's figures here (make bench: docs/results/)")
    p.add_argument("--smoke", action="store_true", help="label the report as a smoke run (not results)")
    return p


def measure_config(
    name: str, server: Naive | Peer | Stack, args: argparse.Namespace, bodies: dict[tuple[str, bool], Path]
) -> tuple[list[dict[str, Any]], float]:
    """Every endpoint x concurrency x repetition against one running configuration; returns runs and RSS MiB."""
    torchserve = name == "torchserve"
    if isinstance(server, Stack):
        base = server.inference_url if torchserve else server.gateway_url
        auth = server.inference_key() if torchserve else None
    else:
        base, auth = server.url, None

    def url(endpoint: str) -> str:
        return f"{base}/predictions/{ENDPOINTS[endpoint].model}" if torchserve else base + ENDPOINTS[endpoint].path

    runs: list[dict[str, Any]] = []
    for endpoint in args.endpoints:
        if args.warmup > 0:
            run_wrk(url(endpoint), bodies[endpoint, torchserve], connections=8, seconds=args.warmup, auth=auth)
    for rep in range(args.repeats):
        for endpoint in args.endpoints:
            for c in args.concurrency:
                roles = server.roles()
                wait_idle([p for ps in roles.values() for p in ps])  # the previous cell's backlog is served first
                before = {role: cpu_seconds(ps) for role, ps in roles.items()}
                r = run_wrk(
                    url(endpoint), bodies[endpoint, torchserve], connections=c, seconds=args.duration, auth=auth
                )
                cpu = {role: cpu_seconds(ps) - before[role] for role, ps in roles.items()}
                if torchserve:
                    cpu.pop("gateway", None)  # idle during direct runs
                per = ENDPOINTS[endpoint].texts_per_request
                runs.append(
                    {"config": name, "endpoint": endpoint, "concurrency": c, "rep": rep, "rps": r.rps,
                     "texts_per_s": r.rps * per, "p50_ms": r.p50_ms, "p90_ms": r.p90_ms, "p99_ms": r.p99_ms,
                     "errors": r.errors, "requests": r.requests, "cpu_s": cpu, "client_cpu_s": r.client_cpu_s}
                )  # fmt: skip
                print(
                    f"[bench] {name:10s} /{endpoint:15s} c={c:<3d} rep {rep + 1}: {r.rps:7.1f} req/s  "
                    f"p50 {r.p50_ms:6.1f}  p99 {r.p99_ms:7.1f} ms  errors {r.errors}  cpu {report.cpu_text(cpu)}",
                    flush=True,
                )
    rss = sum(rss_mib(ps) for role, ps in server.roles().items() if not (torchserve and role == "gateway"))
    return runs, rss


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = sorted(set(args.configs) - set(CONFIGS)) + sorted(set(args.endpoints) - set(ENDPOINTS))
    if unknown:
        print(f"[bench] error: unknown configuration or endpoint {unknown}", file=sys.stderr)
        return 2
    try:
        require_wrk()
    except LoadError as exc:
        print(f"[bench] error: {exc}", file=sys.stderr)
        return 2
    archives = served_archives(args.model_store)
    missing = sorted({ENDPOINTS[e].model for e in args.endpoints} - set(archives))
    if missing:
        print(f"[bench] no archive for {missing} in {args.model_store}: skipping their endpoints", flush=True)
        args.endpoints = [e for e in args.endpoints if ENDPOINTS[e].model in archives]
    if not args.endpoints:
        print(f"[bench] error: nothing to measure (archives found: {archives})", file=sys.stderr)
        return 2
    busy_before = busy_processes()
    if busy_before:
        print(f"[bench] warning: the machine is busy, numbers will be noisy: {busy_before}", flush=True)
    started = dt.datetime.now(dt.UTC)
    load_before = load_average()
    texts = {"cola": cola_sentences(args.data_dir), "sentiment": review_texts(args.data_dir)}
    runs: list[dict[str, Any]] = []
    rss: dict[str, float] = {}
    ceilings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        dirs = {name: extract(path, tmp / "extracted") for name, path in archives.items()}
        bodies = {
            (e, ts): write_bodies(tmp / f"{e.replace('/', '-')}-{'ts' if ts else 'gw'}.jsonl",
                                  texts[ENDPOINTS[e].model], ENDPOINTS[e], torchserve=ts)
            for e in args.endpoints for ts in (False, True)
        }  # fmt: skip
        if args.ceiling_seconds > 0:
            for model in sorted({ENDPOINTS[e].model for e in args.endpoints}):
                values = [
                    ceiling.measure(dirs[model], texts[model], batch=args.ceiling_batch, seconds=args.ceiling_seconds)
                    for _ in range(args.repeats)
                ]
                ceilings[model] = statistics.median(values)
                print(f"[bench] ceiling {model}: {ceilings[model]:.1f} texts/s ({values})", flush=True)
        in_process: dict[str, Naive | Peer] = {
            "naive": Naive(models=dirs, log=tmp / "naive.log"),
            "naive-threads": Naive(models=dirs, log=tmp / "naive-threads.log", threads=0),
            "bentoml": Peer(models=dirs, log=tmp / "bentoml.log", python=args.peer_python, workers=args.peer_workers),
        }
        for name, server in in_process.items():
            if name not in args.configs:
                continue
            try:
                server.start(timeout=args.timeout)
                new, rss[name] = measure_config(name, server, args, bodies)
                runs += new
            except ServerError:
                tail = server.log.read_text(errors="replace").splitlines()[-30:] if server.log.is_file() else []
                print(f"[bench] {name} failed; the end of its log:", *tail, sep="\n", file=sys.stderr)
                raise
            finally:
                server.stop()
        stack_configs = [c for c in ("torchserve", "gateway") if c in args.configs]
        if stack_configs:
            store = store_of(archives.values(), tmp / "store")  # only the archives under test: one version per model
            stack = Stack(store=store, run_dir=tmp / "run")
            try:
                stack.start(timeout=args.timeout)
                for name in stack_configs:
                    new, rss[name] = measure_config(name, stack, args, bodies)
                    runs += new
            except ServerError:
                print(f"[bench] stack logs: {stack.run_dir / 'logs'}", file=sys.stderr)
                raise
            finally:
                stack.stop()
    finished = dt.datetime.now(dt.UTC)
    busy_after = busy_processes()
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "ceilings": ceilings, "rss_mib": rss}, indent=1))
    cells = report.aggregate(runs)
    conditions = {
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": round((finished - started).total_seconds() / 60, 1),
        "busy": sorted(set(busy_before + busy_after)),
        "loadavg_before": load_before,
    }
    title = f"{'SMOKE RUN (not results) — ' if args.smoke else ''}{conditions['started']}, {machine()['cpu']}"
    report.plot(cells, ceilings, args.plot, title=title)
    args.out.write_text(render(args, cells, ceilings, rss, archives, conditions, argv), encoding="utf-8")
    print(f"[bench] wrote {args.out} and {args.plot}", flush=True)
    if args.readme:
        when = f"{started:%Y-%m-%d}, {args.repeats} repetition(s) of {args.duration:g} s"
        when += " (SMOKE RUN: noisy, not results)" if args.smoke else ""
        text = report.summary(cells, ceilings, rss, when=when)
        if args.record:  # what tests/benchmarks/test_summary.py renders the README's section from again
            args.record.parent.mkdir(parents=True, exist_ok=True)
            figures = {"cells": [dataclasses.asdict(c) for c in cells], "ceilings": ceilings, "rss": rss, "when": when}
            args.record.write_text(json.dumps(figures, indent=1) + "\n")
        args.readme.write_text(doc_sections.replaced(args.readme.read_text(), "bench:summary", text))
        print(f"[bench] wrote the bench:summary section of {args.readme}", flush=True)
    return 0


def render(
    args: argparse.Namespace,
    cells: list[report.Cell],
    ceilings: dict[str, float],
    rss: dict[str, float],
    archives: dict[str, Path],
    conditions: dict[str, Any],
    argv: list[str] | None,
) -> str:
    m = machine()
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Benchmarks",
        "",
        METHOD.strip(),
        "",
        "## Results" + (" — SMOKE RUN: noisy, NOT results" if args.smoke else ""),
        "",
    ]
    if args.smoke:
        lines += [
            "> **No clean measurement has been taken yet.** The numbers below come from a short smoke run that proves",
            "> the harness end to end, on a machine shared with other work; they are noisy and are not results.",
            "",
        ]
    lines += [
        f"- Date: {conditions['started']} ({conditions['minutes']} min); command: `{command}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['isa']}), {m['memory_gib']} GiB; torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}, Python {m['python']}, Linux {m['kernel']}",
        f"- GPU: {m['gpu']} (the handler serves CUDA in fp16 with PyTorch)"
        if m["gpu"]
        else "- GPU: none on this machine, so the handler's CUDA path (fp16, PyTorch) is not measured here",
        f"- Models: {', '.join(f'`{p.name}`' for p in archives.values())}; texts: CoLA in-domain dev sentences "
        "(`/generate`), Google Play review texts (`/predict`); batch endpoints send 8 texts per request",
        f"- Runs: {args.duration:g} s per cell, {args.repeats} repetition(s), medians; {args.warmup:g} s warm-up per "
        f"configuration and endpoint; clients {', '.join(map(str, args.concurrency))}",
        f"- Load average before the run: {conditions['loadavg_before']}; other heavy processes seen: "
        + ("; ".join(f"`{b}`" for b in conditions["busy"]) if conditions["busy"] else "none"),
        "",
        "In-process ceiling (one single-threaded process per core, batch "
        f"{args.ceiling_batch}): "
        + (", ".join(f"`{k}` {v:.1f} texts/s" for k, v in ceilings.items()) if ceilings else "not measured"),
        "",
        "Resident memory after the runs (MiB, all processes of the configuration): "
        + ", ".join(f"{report.CONFIG_NAMES[k]} {v:.0f}" for k, v in rss.items()),
        "",
        "### Targets (full stack through the gateway)",
        "",
        *report.targets(cells, ceilings),
        "",
        f"![throughput and p99 vs clients]({args.plot.name})",
        "",
        *report.tables(cells),
    ]
    return "\n".join(lines) + "\n"


METHOD = """
`make bench` (or `python -m benchmarks.run`) measures, side by side in one run, with the same weights (the default
version of each model in `model_store/`) and the same texts:

1. **naive baseline** (`benchmarks/baselines/naive_server.py`): one uvicorn process, FastAPI, the model loaded at
   start-up with the handler's own `load` on the engine `torch` (PyTorch's dynamic int8, one torch thread) with the
   archive's own checked settings (the same Linear layers int8, the same ones fp32, the same temperature: the
   quality the archive was checked for) and called inside the `async` endpoint per request, as the original
   projects served their PyTorch models (with int8 added, which only makes the baseline faster);
2. **naive baseline, all threads**: the same server with torch's default thread count (one per core), as a server
   that never sets it runs: each forward may use every core, still one request at a time;
3. **BentoML (peer)** (`benchmarks/baselines/bentoml_service.py`, BentoML 1.4 from its own virtualenv `.venv-peer`,
   `make peer`): an established serving framework with adaptive batching, serving the same archives with the
   handler's own code (engine ONNX Runtime int8, the archive's settings) in-process. A front service with the naive
   server's contract calls a model service whose batchable APIs gather the texts of concurrent requests (up to 64
   per call, BentoML's adaptive window); one front process, one single-threaded model process per core
   (`--peer-workers`, as the stack runs one worker per core and model), `bentoml serve`, usage statistics off;
4. **TorchServe direct**: the inference API (`/predictions/<model>`, `{"text"}` / `{"texts"}`, inference token);
5. **gateway (full stack)**: `python -m stack start` on free loopback ports, requests through the gateway.

Load: `wrk` (one thread, `benchmarks/lua/post.lua`) sends distinct JSON bodies round-robin from a file of CoLA dev
sentences or review texts, for a bounded duration, at 1, 8, 32 and 64 connections (closed loop: each connection
sends its next request when the previous one is answered); each cell starts once the server processes are idle
again (a run ends with requests still queued, which the next cell must not pay for). Reported per cell: requests/s,
texts/s, p50/p90/p99 latency, errors (non-2xx answers + socket errors), CPU seconds of each server process during
the run (psutil, before/after: naive process; BentoML's front, model and arbiter processes; gateway; TorchServe
frontend (JVM); TorchServe workers) and of `wrk`
itself. The ceiling is the handler's batched forward (`handlers.text_classification.predict`) in-process with the
archive's own handler settings (the served engine, ONNX Runtime int8), one single-threaded process per core, batch
8, texts/s summed. Each cell is repeated and the median is quoted. How the stack was tuned, what each lever
measured and what limits the numbers below: [performance.md](performance.md).

Options: `--duration`, `--repeats`, `--concurrency 1,8,32,64`,
`--configs naive,naive-threads,bentoml,torchserve,gateway`, `--endpoints generate,predict,generate/batch,predict/batch`,
`--model-store`, `--data-dir`, `--ceiling-seconds`, `--peer-python`, `--peer-workers`, `--json raw.json`, `--smoke`.
The machine should be otherwise idle: the run records other training/test processes and the load average it saw.
"""


if __name__ == "__main__":
    raise SystemExit(main())
