"""What a measurement ran on and beside: the machine, and other heavy work sharing it (every benchmark records both
with its figures, so that a number can be read with the conditions it was taken in)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import psutil


def machine() -> dict[str, Any]:
    import onnxruntime
    import torch

    model, flags = "unknown", ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1]
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f} " in f" {flags} "]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": ", ".join(isa) or "none of avx2/avx512/vnni/amx",
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def busy_processes() -> list[str]:
    """Other heavy work on the machine (training, test runs) that would distort the numbers."""
    me = os.getpid()
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["status"] == psutil.STATUS_STOPPED:  # paused (SIGSTOP) for the measurement: it takes no CPU
            continue
        if p.info["pid"] != me and ("training.train" in cmd or "pytest" in cmd) and "pgrep" not in cmd:
            found.append(f"{p.info['pid']}: {cmd[:100]}")
    return found


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, as ``uptime`` prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
