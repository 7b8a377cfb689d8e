"""What a shadow costs the clients: ``/generate`` latency under ``wrk`` at 8 and 32 connections, through gateways
with the shadow off and at each ``--percents``, side by side on one TorchServe (runs alternate, so a shared machine's
load falls on all alike). The shadow is a copy of the default archive under another version, in a temporary store:

    .venv/bin/python -m benchmarks.shadow --model-store model_store --doc docs/performance.md   # make bench-shadow

One TorchServe holds ``cola-<default>.mar`` and the same file as ``cola-<shadow>.mar`` (a hard link, or a copy);
each gateway process reads its own directory holding only ``served.json``. The table goes between the
``shadow`` markers of ``--doc``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import zipfile
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.gateway_cpu import started
from benchmarks.load import ENDPOINTS, WrkResult, cola_sentences, run_wrk, write_bodies
from benchmarks.servers import free_ports
from stack.doc_sections import replaced
from stack.management import Management
from stack.torchserve import Ports, TorchServe
from torchserve_protocol.archives import ARCHIVE_RE, version_key
from torchserve_protocol.layout import REPO
from torchserve_protocol.store import ModelState, Share, State, VersionState, write_state

SHADOW_VERSION = "1.1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store", help="where cola-<v>.mar is")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", REPO / "data")))
    parser.add_argument("--percents", default="10,100", help="shadow shares to measure beside 'off'")
    parser.add_argument("--clients", default="8,32", help="wrk connections")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--doc", type=Path, help="write the table into this document's shadow section")
    return parser


def default_archive(store: Path) -> tuple[Path, str]:
    found = [(m["version"], p) for p in store.glob("cola-*.mar") if (m := ARCHIVE_RE.match(p.name))]
    if not found:
        raise SystemExit(f"no cola-<version>.mar in {store}")
    version, path = max(found, key=lambda vp: version_key(vp[0]))
    return path, version


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_as_version(source: Path, target: Path, version: str) -> None:
    """``source`` under another version: TorchServe takes the version from the archive's manifest, not its name (a
    plain copy registers as the same version: 409). Members are copied as they are stored."""
    manifest = "MAR-INF/MANIFEST.json"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if info.filename == manifest:
                data = json.loads(old.read(info))
                data["model"]["modelVersion"] = version
                new.writestr(info, json.dumps(data, indent=2))
            else:
                with old.open(info) as member, new.open(info, "w", force_zip64=True) as out:
                    shutil.copyfileobj(member, out, 1 << 20)


def state(default: str, shadow: Share | None) -> State:
    versions = {v: VersionState(workers=1) for v in (default, SHADOW_VERSION)}
    return State(models={"cola": ModelState(default=default, versions=versions, shadow=shadow)})


def shadow_counts(url: str) -> str:
    """The gateway's copies sent and dropped so far (all runs), from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name in ("gateway_shadow_copies_total", "gateway_shadow_dropped_total"):
                key = found.labels.get("reason", "sent")
                values[key] = values.get(key, 0) + found.value
    return ", ".join(f"{k} {v:.0f}" for k, v in values.items() if v) or "none"


def table(results: dict[tuple[str, int], list[WrkResult]], modes: list[str], clients: list[int]) -> str:
    rows = [
        "| shadow | clients | requests/s | p50 ms | p99 ms | p50 added vs off | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in clients:
        off = statistics.median(r.p50_ms for r in results[("off", c)])
        for mode in modes:
            runs = results[(mode, c)]
            p50 = statistics.median(r.p50_ms for r in runs)
            rps = statistics.median(r.rps for r in runs)
            p99 = statistics.median(r.p99_ms for r in runs)
            added = "" if mode == "off" else f"{p50 - off:+.1f} ms ({(p50 / off - 1) * 100:+.0f}%)"
            rows.append(
                f"| {mode} | {c} | {rps:.1f} | {p50:.1f} | {p99:.1f} | {added} | {sum(r.errors for r in runs)} |"
            )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    percents = [float(p) for p in args.percents.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    archive, default = default_archive(args.model_store)
    modes = ["off", *(f"{p:g}%" for p in percents)]
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = root / "store"
        store.mkdir()
        link_or_copy(archive, store / archive.name)
        copy_as_version(archive, store / f"cola-{SHADOW_VERSION}.mar", SHADOW_VERSION)
        ts = TorchServe(model_store=store, run_dir=root / "run", ports=Ports(*free_ports(5)))
        ts.start()
        stack.callback(ts.stop)
        ts.wait_up()
        management = Management(ts.management_url, ts.key_file)
        for name in (archive.name, f"cola-{SHADOW_VERSION}.mar"):
            management.register(name, workers=1)
        management.set_default("cola", default)
        management.wait_ready(["cola"])
        env = dict(os.environ, GATEWAY_INFERENCE_URL=ts.inference_url, GATEWAY_MANAGEMENT_URL=ts.management_url,
                   GATEWAY_KEY_FILE=str(ts.key_file), PYTHONPATH=str(REPO))  # fmt: skip
        bodies = write_bodies(root / "bodies", cola_sentences(args.data_dir), ENDPOINTS["generate"], torchserve=False)
        urls = {}
        for mode, port, percent in zip(modes, free_ports(len(modes)), [None, *percents], strict=True):
            where = root / f"gateway-{mode.rstrip('%')}"
            where.mkdir()
            write_state(where, state(default, Share(SHADOW_VERSION, percent) if percent is not None else None))
            urls[mode] = url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "gateway", "--port", str(port), "--log-level", "warning"]
            stack.enter_context(started(cmd, cwd=REPO, env={**env, "GATEWAY_MODEL_STORE": str(where)},
                                        ready_url=f"{url}/health"))  # fmt: skip
            run_wrk(f"{url}/generate", bodies, connections=8, seconds=2)  # warm-up
        results: dict[tuple[str, int], list[WrkResult]] = {(m, c): [] for m in modes for c in clients}
        copies: dict[str, str] = {}
        for _ in range(args.runs):
            for c in clients:
                for mode in modes:
                    result = run_wrk(f"{urls[mode]}/generate", bodies, connections=c, seconds=args.seconds)
                    results[(mode, c)].append(result)
                    print(f"{mode:>5} c={c}: {result.rps:.1f} rps, p50 {result.p50_ms:.1f} ms, "
                          f"p99 {result.p99_ms:.1f} ms, errors {result.errors}", flush=True)  # fmt: skip
                    if mode != "off":
                        copies[f"{mode} c={c}"] = shadow_counts(urls[mode])
    body = table(results, modes, clients)
    body += (
        "\nShadow copies (cumulative per gateway after each cell's last run): "
        + "; ".join(f"{cell}: {counts}" for cell, counts in copies.items())
        + ".\n"
    )
    print(body)
    if args.doc is not None:
        args.doc.write_text(replaced(args.doc.read_text(), "shadow", body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
