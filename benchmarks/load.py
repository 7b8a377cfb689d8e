"""The load side: distinct realistic texts, JSON body files, and one bounded ``wrk`` run parsed into numbers."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua" / "post.lua"
BATCH_TEXTS = 8  # texts per request on the batch endpoints


class LoadError(RuntimeError):
    pass


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise LoadError(
            "`wrk` (the load generator) is not on PATH: install it with `apt-get install -y wrk` "
            "(Debian/Ubuntu; `make bench` does this when it can) or `brew install wrk`"
        )
    return path


def cola_sentences(data_dir: Path) -> list[str]:
    """CoLA in-domain dev sentences (column 4 of the TSV): short, distinct."""
    path = data_dir / "cola" / "in_domain_dev.tsv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        texts = [row[3].strip() for row in rows if len(row) >= 4 and row[3].strip()]
    return list(dict.fromkeys(texts))


def review_texts(data_dir: Path, *, max_chars: int = 2000) -> list[str]:
    """Google Play review texts (column ``content``): review-length, distinct."""
    path = data_dir / "google_play_reviews" / "reviews.csv"
    with path.open(newline="", encoding="utf-8") as f:
        texts = [(row.get("content") or "").strip() for row in csv.DictReader(f)]
    return list(dict.fromkeys(t for t in texts if t and len(t) <= max_chars))


@dataclass(frozen=True)
class Endpoint:
    """One client-facing endpoint and how each configuration is asked for it."""

    path: str  # the gateway's / naive server's path
    model: str  # TorchServe model name
    field: str  # the gateway's JSON field
    batch: bool

    @property
    def texts_per_request(self) -> int:
        return BATCH_TEXTS if self.batch else 1


ENDPOINTS = {
    "generate": Endpoint("/generate", "cola", "passage", batch=False),
    "predict": Endpoint("/predict", "sentiment", "text", batch=False),
    "generate/batch": Endpoint("/generate/batch", "cola", "passages", batch=True),
    "predict/batch": Endpoint("/predict/batch", "sentiment", "texts", batch=True),
}


def write_bodies(path: Path, texts: list[str], endpoint: Endpoint, *, torchserve: bool) -> Path:
    """One JSON body per line: the gateway's contract, or TorchServe's ``{"text"}``/``{"texts"}``."""
    lines = []
    if endpoint.batch:
        groups = [texts[i : i + BATCH_TEXTS] for i in range(0, len(texts) - BATCH_TEXTS + 1, BATCH_TEXTS)]
        for group in groups:
            lines.append(json.dumps({"texts" if torchserve else endpoint.field: group}))
    else:
        for text in texts:
            lines.append(json.dumps({"text" if torchserve else endpoint.field: text}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int  # non-2xx/3xx answers + socket errors (connect, read, write, timeout)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    client_cpu_s: float  # CPU seconds used by wrk itself

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    url: str, bodies: Path, *, connections: int, seconds: float, auth: str | None = None, timeout_s: int = 10
) -> WrkResult:
    """One bounded wrk run (one thread: it needs little CPU at these rates and leaves the cores to the server)."""
    cmd = [
        require_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s}s",
        "-s", str(LUA), url, "--", str(bodies),
    ]  # fmt: skip
    env = dict(os.environ, BENCH_AUTH=f"Bearer {auth}" if auth else "")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + timeout_s + 30, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({proc.returncode}) on {url}: {proc.stderr.strip() or proc.stdout.strip()}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1e3,
        p90_ms=data["p90_us"] / 1e3,
        p99_ms=data["p99_us"] / 1e3,
        client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )
