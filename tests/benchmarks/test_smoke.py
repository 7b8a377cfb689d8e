"""The benchmark harness and the soak client, end to end on the tiny models in seconds: the same code `make bench`
and `make soak` run, with the durations cut to one or two seconds."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks import soak
from benchmarks.baselines.naive_server import SETTINGS, model_dir, served_in_torch
from benchmarks.report import Cell
from benchmarks.report import summary as summary_of
from benchmarks.servers import Naive
from handlers.text_classification import settings_from
from stack.torchserve import TorchServe
from tests.gateway.server import running_gateway, settings_for
from torchserve_protocol.layout import REPO
from training.package import package

pytestmark = pytest.mark.integration


def run_soak(url: str, ts: TorchServe, data_dir: Path, *extra: str) -> int:
    argv = ["--url", url, "--rate", "10", "--duration", "2", "--run-dir", str(ts.run_dir), "--data-dir", str(data_dir)]
    return soak.main([*argv, *extra])


def test_the_soak_reports_and_writes_its_section(
    torchserve: TorchServe,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = tmp_path / "reliability.md"
    doc.write_text(f"# Reliability\n\nkept before\n\n{soak.BEGIN}\nthe last soak\n{soak.END}\n\nkept after\n")
    monkeypatch.setattr(soak, "DOC", doc)  # --write-doc's target, here a copy instead of docs/reliability.md
    with running_gateway(settings_for(torchserve)) as url:
        assert run_soak(url, torchserve, data_dir, "--write-doc") == 0
    out = capsys.readouterr().out
    assert "requests: 20," in out
    assert "statuses {200: 20}; **errors: 0**" in out
    assert re.search(r"^\| 1 \| 20 \| \d+ \| \d+ \| \d+ \| \d+ \| 0 \|$", out, re.MULTILINE)  # the minute row
    assert re.search(r"^\| TorchServe java \d+ \| \d+ \| \d+ \|$", out, re.MULTILINE)  # RSS found from the pid file
    written = doc.read_text()
    assert written == f"# Reliability\n\nkept before\n\n{soak.BEGIN}\n{out.rstrip(chr(10))}\n{soak.END}\n\nkept after\n"


def test_the_soak_exits_1_on_a_failed_request(
    torchserve: TorchServe, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway that refuses texts over 20 characters (422): most sentences and reviews of the mix fail."""
    with running_gateway(settings_for(torchserve, max_text_chars=20)) as url:
        assert run_soak(url, torchserve, data_dir) == 1
    out = capsys.readouterr().out
    failed = int(re.search(r"\*\*errors: (\d+)\*\*", out).group(1))  # type: ignore[union-attr]
    assert 0 < failed <= 20
    assert "422:" in out


def test_the_benchmark_harness_writes_its_report_and_plot(tiny_store: Path, tmp_path: Path) -> None:
    """`make bench` cut to one second per cell: naive baseline, TorchServe direct and the full stack each measured.
    The naive server with all threads and the peer (BentoML) have their own tests: on a busy machine the former can
    answer nothing within one second (its threads wait on each other), which says nothing about the harness."""
    out, plot, readme = tmp_path / "benchmarks.md", tmp_path / "benchmarks.png", tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench:summary:begin -->\nthe last run\n<!-- bench:summary:end -->\n\nkept\n")
    cmd = [sys.executable, "-m", "benchmarks.run", "--model-store", str(tiny_store), "--duration", "1",
           "--warmup", "0", "--repeats", "1", "--concurrency", "1", "--ceiling-seconds", "0",
           "--endpoints", "generate", "--configs", "naive,torchserve,gateway",
           "--out", str(out), "--plot", str(plot), "--readme", str(readme),
           "--record", str(tmp_path / "bench.json"), "--smoke"]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    report = out.read_text()
    assert "SMOKE RUN" in report
    rows = re.findall(
        r"^\| (naive baseline|TorchServe direct|gateway \(full stack\)) \| 1 \| [\d.]+ .*\| 0 / (\d+) \|",
        report,
        re.MULTILINE,
    )
    assert sorted(name for name, _ in rows) == ["TorchServe direct", "gateway (full stack)", "naive baseline"]
    assert all(int(requests) > 0 for _, requests in rows)
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    summary = readme.read_text()
    assert "the last run" not in summary
    assert summary.endswith("<!-- bench:summary:end -->\n\nkept\n")
    assert "SMOKE RUN" in summary
    figures = json.loads((tmp_path / "bench.json").read_text())
    cells = [Cell(**cell) for cell in figures["cells"]]
    assert summary.startswith(
        f"# x\n\n<!-- bench:summary:begin -->\n{summary_of(cells, {}, figures['rss'], when=figures['when'])}"
    )
    assert re.search(r"^\| 1 client: p50 \| [\d.]+ ms \| [\d.]+ ms \| [\d.]+ ms \|$", summary, re.MULTILINE)


def test_the_naive_server_runs_with_torchs_default_thread_count(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The `naive-threads` configuration: `--threads 0` starts with torch's default and answers the contract."""
    naive = Naive(models=tiny_models, log=tmp_path / "naive.log", threads=0)
    try:
        naive.start(timeout=120)
        answer = httpx.post(f"{naive.url}/generate", json={"passage": "The cat sat on the mat."}, timeout=30)
    finally:
        naive.stop()
    assert answer.status_code == 200, answer.text
    assert 0 <= answer.json()["prob"] <= 1


def test_the_naive_server_serves_the_archives_checked_settings_in_torch(
    tiny_models: dict[str, Path], tiny_store: Path, tmp_path: Path
) -> None:
    """Same served model as the handler (its fp32 modules, granularity, temperature), on PyTorch's engine where the
    archive carries the fp32 weights; on the archive's own engine (its ONNX graph) where it carries none."""
    weighted = package(tiny_models["cola"], name="cola", store=tmp_path / "store", version="1.0", fp32_weights=True)
    directory = model_dir(weighted, tmp_path / "weighted")
    handler = yaml.safe_load((directory / "model-config.yaml").read_text())["handler"]
    served = served_in_torch(directory, SETTINGS.model_copy(update={"num_threads": 3}))
    assert served == settings_from(handler).model_copy(update={"engine": "torch", "num_threads": 3})
    cpu_only = model_dir(tiny_store / "cola-1.0.mar", tmp_path / "cpu-only")
    served = served_in_torch(cpu_only, SETTINGS.model_copy(update={"num_threads": 3}))
    assert served == settings_from(handler).model_copy(update={"engine": "onnxruntime", "num_threads": 3})
    assert served_in_torch(tmp_path, SETTINGS) == SETTINGS  # a bare save_pretrained folder: the handler's defaults


def test_a_server_whose_port_was_taken_meanwhile_starts_again_on_another(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """The bind-and-release race of free ports, made certain: the chosen port is held by another listener."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        naive = Naive(models={"cola": tiny_models["cola"]}, log=tmp_path / "naive.log", port=taken)
        try:
            naive.start(timeout=120)
            answer = httpx.post(f"{naive.url}/generate", json={"passage": "The cat sat."}, timeout=30)
        finally:
            naive.stop()
    assert naive.port != taken
    assert answer.status_code == 200
    assert b"address already in use" in (tmp_path / "naive.log").read_bytes().lower()
