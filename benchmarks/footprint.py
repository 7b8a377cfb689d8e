"""What a model store's archives cost TorchServe: bytes on disk, bytes extracted, seconds to register, resident memory
per worker. docs/deployment.md's sizing table is derived from these figures (``stack/sizing.py``).

    python -m benchmarks.footprint --model-store DIR [--json OUT]

A TorchServe of its own (free loopback ports, a temporary run directory) registers each archive of the store in
turn, synchronously with the archive's own workers, exactly as the launcher does. For each archive: its size; the
bytes TorchServe extracted (its ``TEMP``, where 0.12 unpacks every archive); the seconds from the register call to
READY workers; each worker's resident set (RSS) and unique set (USS: what the worker alone holds). Then the
frontend's RSS and the whole tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from benchmarks.servers import free_ports, torchserve_roles
from stack.management import Management
from stack.torchserve import Ports, TorchServe
from torchserve_protocol.archives import archives_in
from torchserve_protocol.layout import temp_in

MiB = 1 << 20


@dataclass(frozen=True)
class ArchiveFootprint:
    archive: str
    bytes: int
    extracted_bytes: int
    register_s: float
    workers: int
    worker_rss_mib: list[float]
    worker_uss_mib: list[float]


@dataclass(frozen=True)
class Footprint:
    archives: list[ArchiveFootprint]
    frontend_rss_mib: float
    tree_rss_mib: float


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def worker_pids(management: Management, name: str, version: str) -> list[int]:
    described = next(v for v in management.versions(name) if str(v["modelVersion"]) == version)
    return [int(w["pid"]) for w in described.get("workers", []) if w.get("pid")]


def measure(store: Path, *, timeout: float = 300.0) -> Footprint:
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        ts = TorchServe(model_store=store, run_dir=Path(tmp), ports=Ports(*free_ports(5)))
        ts.start()
        try:
            ts.wait_up(timeout=timeout)
            management = Management(ts.management_url, ts.key_file)
            extracted = temp_in(Path(tmp))
            measured = []
            for archive in archives_in(store):
                before = tree_bytes(extracted)
                started = time.perf_counter()
                management.register(archive.path.name, timeout=timeout)
                management.wait_ready([archive.name], timeout=timeout)
                seconds = time.perf_counter() - started
                workers = [psutil.Process(pid) for pid in worker_pids(management, archive.name, archive.version)]
                memory = [w.memory_full_info() for w in workers]
                measured.append(
                    ArchiveFootprint(
                        archive=archive.path.name,
                        bytes=archive.path.stat().st_size,
                        extracted_bytes=tree_bytes(extracted) - before,
                        register_s=round(seconds, 1),
                        workers=len(workers),
                        worker_rss_mib=[round(m.rss / MiB) for m in memory],
                        worker_uss_mib=[round(m.uss / MiB) for m in memory],
                    )
                )
            roles = torchserve_roles(ts.process.pid if ts.process else None)
            tree = [*roles["ts-frontend"], *roles["ts-workers"]]
            return Footprint(
                archives=measured,
                frontend_rss_mib=round(sum(p.memory_info().rss for p in roles["ts-frontend"]) / MiB),
                tree_rss_mib=round(sum(p.memory_info().rss for p in tree) / MiB),
            )
        finally:
            ts.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.footprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=Path(os.environ.get("MODEL_STORE", "model_store")))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = json.dumps(asdict(measure(args.model_store)), indent=1)
    if args.json:
        args.json.write_text(figures + "\n")
    print(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
