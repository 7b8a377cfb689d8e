"""The ceiling: the handler's own batched forward throughput in-process, with all cores used the way the tuned
server uses them (one single-threaded process per core, each running :func:`handlers.text_classification.predict`
on batches of distinct texts with the archive's own handler settings: engine, quantization). No HTTP, no
queueing: the best any server on this engine can do on this machine."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from handlers.text_classification import PADDING_SLACK


def served_settings(model_dir: Path) -> Any:
    """The handler settings of the extracted archive (engine, quantization, threads), as its workers read them."""
    import yaml

    from handlers.text_classification import settings_from

    config = model_dir / "model-config.yaml"
    section = yaml.safe_load(config.read_text()).get("handler") if config.is_file() else None
    return settings_from(section)


def _worker(
    model_dir: str, texts: list[str], batch: int, seconds: float, offset: int, slack: float, barrier: Barrier, out: Any
) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    from handlers.text_classification import load, predict

    settings = served_settings(Path(model_dir))
    loaded = load(model_dir, settings=settings)
    for _ in range(3):  # warm-up
        predict(loaded, texts[:batch], max_length=settings.max_length, slack=slack)
    barrier.wait()
    done, i = 0, offset
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        chunk = [texts[(i + k) % len(texts)] for k in range(batch)]
        predict(loaded, chunk, max_length=settings.max_length, slack=slack)
        done += batch
        i += batch
    out.put(done)


def measure(
    model_dir: Path,
    texts: list[str],
    *,
    batch: int = 8,
    processes: int | None = None,
    seconds: float = 10,
    slack: float = PADDING_SLACK,
) -> float:
    """Texts per second summed over ``processes`` (default: one per core) processes, each with the archive's own
    threads (served: one); ``slack``: :func:`handlers.text_classification.predict`'s padding bound."""
    processes = processes or os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    step = max(1, len(texts) // processes)
    procs = [
        ctx.Process(target=_worker, args=(str(model_dir), texts, batch, seconds, n * step, slack, barrier, out))
        for n in range(processes)
    ]
    for p in procs:
        p.start()
    try:
        counts = [out.get(timeout=seconds + 300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return sum(counts) / seconds
