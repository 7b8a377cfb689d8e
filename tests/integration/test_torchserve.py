"""A real TorchServe serving real .mar archives: batching, per-request errors, token auth, clean shutdown."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from handlers.text_classification import load, predict, settings_from, to_response
from stack.torchserve import TorchServe
from tests.conftest import START_ATTEMPTS, free_port, free_ports, logs_say_a_port_was_taken, says_a_port_was_taken
from torchserve_protocol.layout import REPO

pytestmark = pytest.mark.integration

SENTENCES = [f"the {w} {v} good {n}" for w in ("boy", "girl", "dog", "cat") for v in ("is", "are", "was") for n in
             ("", "and the app works", "but it crashes after the update", "very very much")]  # fmt: skip


def post(ts: TorchServe, model: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    headers = {"Authorization": f"Bearer {ts.keys()['inference']}", "Content-Type": content_type}
    return httpx.post(f"{ts.inference_url}/predictions/{model}", content=body, headers=headers, timeout=30)


def in_process(archive: Path, texts: list[str], scratch: Path) -> list[dict]:
    """What the handler computes for these texts from the archive's own files (model.onnx included) and settings."""
    model_dir = scratch / archive.stem
    with zipfile.ZipFile(archive) as z:
        z.extractall(model_dir)
    settings = settings_from(yaml.safe_load((model_dir / "model-config.yaml").read_text())["handler"])
    loaded = load(model_dir, settings=settings)
    return to_response(predict(loaded, texts, max_length=settings.max_length), loaded.labels)


def test_concurrent_requests_are_batched_and_match_in_process(
    torchserve: TorchServe, tiny_store: Path, tmp_path: Path
) -> None:
    bodies = [json.dumps({"text": s}).encode() for s in SENTENCES]
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda b: post(torchserve, "sentiment", b), bodies))

    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert max(int(r.headers["X-Batch-Size"]) for r in responses) > 1, "TorchServe never batched: test is void"
    assert {r.headers["X-Model-Version"] for r in responses} == {"1.0"}
    expected = in_process(tiny_store / "sentiment-1.0.mar", SENTENCES, tmp_path)
    for response, want in zip(responses, expected, strict=True):
        got = response.json()
        # int8 activations are quantized with one scale per forward pass, so batch neighbours move probabilities
        # slightly: compare within a tolerance, and the label wherever the top two are further apart than that.
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=0.03)
        top, second = sorted(want["probabilities"].values(), reverse=True)[:2]
        if top - second > 0.06:
            assert got["label"] == want["label"]


def test_a_bad_request_in_a_batch_fails_alone(torchserve: TorchServe) -> None:
    good = [(json.dumps({"text": s}).encode(), "application/json") for s in SENTENCES[:24]]
    bad = [(b'{"text": ""}', "application/json"), (b"\xff\xfe", "text/plain"), (b'{"text": 1}', "application/json"),
           (b"{", "application/json"), (b'{"texts": []}', "application/json")] * 2  # fmt: skip
    mixed = [item for pair in zip(good, bad + good[: len(good) - len(bad)], strict=True) for item in pair]
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda item: post(torchserve, "cola", *item), mixed))

    bad_bodies = {b for b, _ in bad}
    batched_with_bad = 0
    for (body, _), response in zip(mixed, responses, strict=True):
        if body in bad_bodies:
            assert response.status_code == 400, body
            assert set(response.json()) == {"error", "type"}
            batched_with_bad += int(response.headers["X-Batch-Size"]) > 1
        else:
            assert response.status_code == 200, response.text
            assert set(response.json()) == {"label", "probabilities"}
    assert batched_with_bad > 0, "no bad request shared a batch with others: test is void"


def test_batch_body_and_plain_text(torchserve: TorchServe, tiny_store: Path, tmp_path: Path) -> None:
    texts = ["i are a boy", "Ünïcödé 😀 مرحبا", "the dog is good " * 200]
    response = post(torchserve, "cola", json.dumps({"texts": texts}).encode())
    assert response.status_code == 200
    body = response.json()
    for got, want in zip(body, in_process(tiny_store / "cola-1.0.mar", texts, tmp_path), strict=True):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=0.03)
    plain = post(torchserve, "cola", b"i are a boy", "text/plain")
    assert plain.status_code == 200
    assert plain.json()["probabilities"] == pytest.approx(body[0]["probabilities"], abs=0.03)


def test_token_is_required(torchserve: TorchServe) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {torchserve.keys()['API']}"}):
        response = httpx.post(f"{torchserve.inference_url}/predictions/cola", json={"text": "a"}, headers=headers)
        assert response.status_code == 400
        assert "InvalidKeyException" in response.text
    assert httpx.get(f"{torchserve.management_url}/models").status_code == 400
    assert stat.S_IMODE(torchserve.key_file.stat().st_mode) == 0o600  # the keys: TorchServe's user alone (README)


def test_worker_sockets_live_in_the_run_directory(torchserve: TorchServe) -> None:
    """Two instances on one machine (tests, compose replicas, a benchmark beside `make serve`) would otherwise share
    /tmp/.ts.sock.9000 and connect to each other's workers."""
    pid = torchserve.running_pid()
    assert pid is not None
    workers = [
        p.cmdline()
        for p in psutil.Process(pid).children(recursive=True)
        if "model_service_worker" in " ".join(p.cmdline())
    ]
    assert workers
    for cmd in workers:
        assert cmd[cmd.index("--sock-name") + 1].startswith(str(torchserve.run_dir / "tmp") + "/")


def test_the_java_frontend_heap_is_bounded(torchserve: TorchServe) -> None:
    pid = torchserve.running_pid()
    assert pid is not None
    java = [p for p in psutil.Process(pid).children(recursive=True) if "org.pytorch.serve.ModelServer" in p.cmdline()]
    assert len(java) == 1
    assert "-Xmx512m" in java[0].cmdline()  # config.properties vmargs: memory cannot grow without bound


def test_only_store_archives_can_be_registered(torchserve: TorchServe, tmp_path: Path) -> None:
    key = torchserve.keys()["management"]
    outside = tmp_path / "evil.mar"
    outside.write_bytes((torchserve.model_store / "cola-1.0.mar").read_bytes())
    for url in ("http://127.0.0.1:1/x.mar", f"file://{outside}", "../cola-1.0.mar", str(outside)):
        response = httpx.post(
            f"{torchserve.management_url}/models", params={"url": url}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code in (400, 404), (url, response.text)


def stack_processes(run_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + json.dumps(proc.info["environ"] or {})
        except psutil.Error:
            continue
        if str(run_dir) in text:
            found.append(proc)
    return found


def start_the_launcher(tiny_store: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path, str]:
    """``python -m stack start`` on free ports; again on new ones (up to ``START_ATTEMPTS``) when one of them was
    taken by another process between choosing it and the bind (the launcher's logs say so)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        run_dir = tmp_path / f"run-{attempt}"
        env = {**os.environ, "RUN_DIR": str(run_dir), "MODEL_STORE": str(tiny_store)}
        env["TS_PORTS"] = ",".join(str(p) for p in free_ports().__dict__.values())
        gateway_port = str(free_port())
        start = subprocess.run([sys.executable, "-m", "stack", "start", "--gateway-port", gateway_port, "--no-train"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
        taken = says_a_port_was_taken(start.stderr) or logs_say_a_port_was_taken(run_dir)
        if start.returncode == 0 or attempt == START_ATTEMPTS or not taken:
            return start, run_dir, gateway_port
        subprocess.run([sys.executable, "-m", "stack", "stop"], cwd=REPO, env=env, capture_output=True, timeout=120)
    raise AssertionError("unreachable")


def test_a_taken_gateway_port_is_told_apart_from_other_failures(tiny_store: Path, tmp_path: Path) -> None:
    """What ``start_the_launcher`` retries on: with the gateway's port held by another listener, the launcher fails
    and its output or logs say the address was in use."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "RUN_DIR": str(run_dir), "MODEL_STORE": str(tiny_store)}
    env["TS_PORTS"] = ",".join(str(p) for p in free_ports().__dict__.values())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        try:
            start = subprocess.run([sys.executable, "-m", "stack", "start", "--gateway-port", port, "--no-train"],
                                   cwd=REPO, env=env, capture_output=True, text=True, timeout=240)  # fmt: skip
        finally:
            subprocess.run([sys.executable, "-m", "stack", "stop"], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert start.returncode != 0
    assert says_a_port_was_taken(start.stderr) or logs_say_a_port_was_taken(run_dir)
    assert stack_processes(run_dir) == []


def test_stack_start_and_stop_leave_nothing_behind(tiny_store: Path, tmp_path: Path) -> None:
    start, run_dir, gateway_port = start_the_launcher(tiny_store, tmp_path)
    env = {**os.environ, "RUN_DIR": str(run_dir), "MODEL_STORE": str(tiny_store)}
    try:
        assert start.returncode == 0, start.stderr
        response = httpx.post(f"http://127.0.0.1:{gateway_port}/generate", json={"passage": "I are a boy"})
        assert response.status_code == 200
        assert 0.0 <= response.json()["prob"] <= 1.0
        assert len(stack_processes(run_dir)) >= 4  # launcher, java, worker per model, gateway
    finally:
        stop = subprocess.run([sys.executable, "-m", "stack", "stop"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    assert stack_processes(run_dir) == []
    assert not (run_dir / "torchserve.pid").exists()


def test_a_failed_request_is_logged_with_its_request_id_never_its_text(torchserve: TorchServe) -> None:
    """The gateway sends X-Request-ID; the handler logs it (with the reason, never the text) where a request fails, so
    one failed request can be followed from the gateway's log into TorchServe's."""
    request_id = f"trace-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {torchserve.keys()['inference']}", "X-Request-ID": request_id}
    body = {"text": "SECRETWORD " * 2000}  # over the handler's max_chars: answered 400
    response = httpx.post(f"{torchserve.inference_url}/predictions/cola", json=body, headers=headers, timeout=30)
    assert response.status_code == 400
    log_file = torchserve.log_dir / "model_log.log"
    deadline = time.monotonic() + 20
    while request_id not in (text := log_file.read_text() if log_file.exists() else ""):
        assert time.monotonic() < deadline, f"{request_id} never reached {log_file}"
        time.sleep(0.2)
    line = next(line for line in text.splitlines() if request_id in line)
    assert "400" in line
    assert "characters" in line
    assert "SECRETWORD" not in text
