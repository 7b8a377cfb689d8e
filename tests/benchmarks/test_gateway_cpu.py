"""The gateway CPU benchmarks' own parts: the stand-in TorchServe answers as the handler does, and the in-process
measurement runs this checkout's gateway and reports numbers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.servers import free_ports
from stack.torchserve import REPO, stop_process_group


def test_the_stand_in_answers_like_the_handler(tmp_path: Path) -> None:
    port, key_file = free_ports(1)[0], tmp_path / "key_file.json"
    cmd = [sys.executable, "-m", "benchmarks.stand_in", "--port", str(port), "--key-file", str(key_file)]
    process = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}/predictions/sentiment/2.0", time.monotonic() + 20
        while True:
            try:
                answer = httpx.post(url, json={"texts": ["a", "b"]}, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the stand-in did not answer within 20 s"
                time.sleep(0.05)
    finally:
        stop_process_group(process.pid, timeout=10)
        process.wait(timeout=10)

    assert answer.headers["X-Model-Version"] == "2.0"
    assert [item["label"] for item in answer.json()] == ["positive", "positive"]
    assert json.loads(key_file.read_text())["inference"]["key"]


def test_the_in_process_benchmark_measures_this_checkout() -> None:
    cmd = [sys.executable, "-m", "benchmarks.gateway_inprocess", "--rounds", "1", "--requests", "200"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True, timeout=120).stdout

    assert re.search(rf"median CPU per /generate in process, {re.escape(str(REPO))}: \d+ us", out), out
