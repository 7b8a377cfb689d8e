"""The benchmark's peer framework (BentoML, from its own virtualenv): the lock pins the served runtime, and the
service answers over real HTTP what the handler answers in-process, on the tiny models."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks.ceiling import served_settings
from benchmarks.servers import PEER_VENV, Peer, extract, served_archives
from handlers.text_classification import load, predict
from torchserve_protocol.layout import REPO

# What decides the answers: the peer must run the graph with the versions the handler is served with.
SERVED_RUNTIME = ("onnxruntime", "numpy", "tokenizers", "transformers", "safetensors", "huggingface_hub", "PyYAML")


def top(probabilities: dict[str, float]) -> str:
    return max(probabilities, key=probabilities.__getitem__)


def pins(path: Path) -> dict[str, str]:
    found = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", path.read_text(), re.MULTILINE)
    return {name.lower().replace("_", "-"): version for name, version in found}


def test_the_peer_lock_pins_the_served_runtime() -> None:
    peer = pins(REPO / "requirements" / "bench-peer.txt")
    served = pins(REPO / "requirements" / "runtime.txt")
    for name in (n.lower().replace("_", "-") for n in SERVED_RUNTIME):
        assert peer.get(name) == served[name], name
    assert "torch" not in peer  # installed first from torch.txt, the CPU wheel, as in `make venv`
    assert "bentoml" in peer


@pytest.mark.slow  # needs .venv-peer (`make peer`, minutes on a fresh machine): `make test-slow` builds it first
@pytest.mark.integration
def test_bentoml_answers_what_the_handler_answers(tiny_store: Path, tmp_path: Path) -> None:
    if not (PEER_VENV / "bin" / "python").is_file():
        pytest.fail(f"{PEER_VENV} does not exist: `make peer` builds it (`make test-slow` does it first)")
    dirs = {name: extract(path, tmp_path / "models") for name, path in served_archives(tiny_store).items()}
    texts = ["The cat sat on the mat.", "Mat the on sat cat the.", "A great app, five stars.", "It crashes."]
    expected = {}
    for name, model_dir in dirs.items():
        settings = served_settings(model_dir)
        loaded = load(model_dir, settings=settings)
        probs = predict(loaded, texts[:1], max_length=settings.max_length)[0].tolist()
        expected[name] = dict(zip(loaded.labels, probs, strict=True))
    peer = Peer(models=dirs, log=tmp_path / "bentoml.log")
    try:
        peer.start(timeout=120)
        with httpx.Client(base_url=peer.url, timeout=30) as client:
            one = client.post("/generate", json={"passage": texts[0]})
            assert one.status_code == 200, one.text
            assert one.json() == {"prob": pytest.approx(expected["cola"]["acceptable"], abs=1e-6)}
            review = client.post("/predict", json={"text": texts[0]}).json()
            assert review["probabilities"] == pytest.approx(expected["sentiment"], abs=1e-6)
            assert review["sentiment"] == top(expected["sentiment"])
            batch = client.post("/generate/batch", json={"passages": texts}).json()["results"]
            assert [set(r) for r in batch] == [{"prob"}] * len(texts)
            reviews = client.post("/predict/batch", json={"texts": texts}).json()["results"]
            assert [r["sentiment"] for r in reviews] == [top(r["probabilities"]) for r in reviews]

            def generate(text: str) -> int:
                return client.post("/generate", json={"passage": text}).status_code

            with ThreadPoolExecutor(8) as pool:  # concurrent requests go through the batching dispatcher
                assert list(pool.map(generate, texts * 4)) == [200] * 16
        tree = [peer.process.pid, *(p.pid for p in psutil.Process(peer.process.pid).children(recursive=True))]
    finally:
        peer.stop()
    assert not [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
