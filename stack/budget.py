"""Will one more model version fit this TorchServe? The check ``publish register`` runs before TorchServe starts
anything, so that a version that cannot fit is refused (one line, with the numbers) instead of being half started
while the memory cgroup's OOM killer takes workers of the version that serves (docs/deployment.md, "Sizing").

What a new version costs, as measured on the defaults (docs/deployment.md, "Sizing"):
* its workers: each about as much resident memory as a worker of the same model already running (else the largest
  worker running);
* its unpacked archive: TorchServe 0.12 unpacks every registered archive into its ``TEMP``; on a tmpfs (compose's
  ``/run/ts``) those pages are memory too, charged to the same cgroup.

What the replica has: its memory cgroup's limit less what it uses now (page cache that can be dropped not counted),
or, with no limit (a local run), the host's available memory; and the free space of the file system that holds
``TEMP``. The readings are plain functions of files under ``/sys/fs/cgroup`` and ``/proc``; :func:`verdict` is pure.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

GiB = 1 << 30
NO_LIMIT = 1 << 60  # cgroup v1 writes a huge number for "no limit"
HEADROOM = 1.1  # a worker's memory grows under load (the ONNX Runtime arena): ask 10% more than it holds idle


@dataclass(frozen=True)
class Budget:
    memory_free: int  # bytes this TorchServe may still use
    memory_source: str  # where that number comes from, in words
    temp_free: int | None  # free bytes where TorchServe unpacks archives (None: unknown)
    temp_in_memory: bool  # TEMP is a tmpfs: the unpacked archive counts as memory as well


@dataclass(frozen=True)
class Cost:
    workers: int
    per_worker: int  # resident bytes of one worker (measured on a running worker)
    unpacked: int  # bytes of the archive unpacked

    @property
    def memory(self) -> int:
        return round(self.workers * self.per_worker * HEADROOM)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def verdict(cost: Cost, budget: Budget) -> str | None:
    """``None`` when ``cost`` fits ``budget``; else the one line that says why not, with the numbers."""
    memory = cost.memory + (cost.unpacked if budget.temp_in_memory else 0)
    if memory > budget.memory_free:
        unpacked = f" + {_gib(cost.unpacked)} unpacked on a tmpfs" if budget.temp_in_memory else ""
        return (
            f"not enough memory for {cost.workers} more worker(s): needs about {_gib(memory)} ({cost.workers} x "
            f"{_gib(cost.per_worker)} measured per worker, +{HEADROOM - 1:.0%}{unpacked}), {budget.memory_source} "
            f"leaves {_gib(budget.memory_free)}; nothing was started: unregister a version, register with fewer "
            "--workers, or raise the limit (docs/deployment.md, Sizing)"
        )
    if budget.temp_free is not None and cost.unpacked > budget.temp_free:
        return (
            f"not enough space to unpack the archive: needs {_gib(cost.unpacked)}, TorchServe's TEMP has "
            f"{_gib(budget.temp_free)} free; nothing was started: unregister a version or give TEMP more space"
        )
    return None


def cgroup_memory(root: Path = Path("/sys/fs/cgroup")) -> tuple[int, int] | None:
    """``(limit, in use)`` of this process's memory cgroup (v2, else v1), page cache that can be dropped not
    counted as in use; ``None`` where there is no limit."""
    v2_limit = root / "memory.max"
    if v2_limit.is_file():
        raw = v2_limit.read_text().strip()
        if raw == "max":
            return None
        used = int((root / "memory.current").read_text())
        return int(raw), used - _stat(root / "memory.stat", "inactive_file")
    v1 = root / "memory"
    if (v1 / "memory.limit_in_bytes").is_file():
        limit = int((v1 / "memory.limit_in_bytes").read_text())
        if limit >= NO_LIMIT:
            return None
        used = int((v1 / "memory.usage_in_bytes").read_text())
        return limit, used - _stat(v1 / "memory.stat", "total_inactive_file")
    return None


def _stat(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def is_tmpfs(path: Path, mounts: Path = Path("/proc/mounts")) -> bool:
    """Whether ``path`` lies on a tmpfs (the longest mount point that contains it)."""
    best, fstype = "", ""
    resolved = str(path.resolve())
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) < 3 or len(fields[1]) <= len(best):
            continue
        if resolved == fields[1] or resolved.startswith(fields[1].rstrip("/") + "/"):
            best, fstype = fields[1], fields[2]
    return fstype == "tmpfs"


def current_budget(temp: Path | None) -> Budget:
    """This machine's (or container's) budget; ``temp``: TorchServe's TEMP, when known."""
    cgroup = cgroup_memory()
    if cgroup is not None:
        limit, used = cgroup
        free, source = max(limit - used, 0), f"the container's memory limit {_gib(limit)} (in use {_gib(used)})"
    else:
        free, source = psutil.virtual_memory().available, "the host's available memory"
    known = temp is not None and temp.is_dir()
    return Budget(
        memory_free=free,
        memory_source=source,
        temp_free=shutil.disk_usage(temp).free if known and temp else None,
        temp_in_memory=bool(known and temp and is_tmpfs(temp)),
    )


def resident_bytes(pids: list[int]) -> list[int]:
    """The resident memory of the processes that this process can see (workers of another host are skipped)."""
    sizes = []
    for pid in pids:
        try:
            sizes.append(psutil.Process(pid).memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return sizes
