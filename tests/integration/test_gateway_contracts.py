"""The real gateway in front of the real shared TorchServe (tiny random models): the two legacy contracts as the
original curl commands send them, batch forms, unusual text, readiness, metrics and version errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.served_quality import served_quality
from stack import readme_examples, results
from stack.torchserve import TorchServe
from tests.gateway.conftest import sample
from tests.gateway.server import running_gateway, settings_for
from torchserve_protocol.layout import REPO
from training.tasks import TASKS, default_data_dir, sha256

pytestmark = pytest.mark.integration

PASSAGES = ["I are a boy", "The boy is happy.", "Dog the the cat.", "She sings beautifully every day"]
REVIEWS = ["This app is great", "It crashes after every update", "ok I guess", "please fix the login"]


@pytest.fixture(scope="module")
def gateway(torchserve: TorchServe) -> Iterator[httpx.Client]:
    with running_gateway(settings_for(torchserve)) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


def direct(ts: TorchServe, model: str, payload: dict[str, object], version: str | None = None) -> httpx.Response:
    """Ask TorchServe itself (no gateway), with the key from its file."""
    url = f"{ts.inference_url}/predictions/{model}" + (f"/{version}" if version else "")
    headers = {"Authorization": f"Bearer {ts.keys()['inference']}"}
    return httpx.post(url, json=payload, headers=headers, timeout=30)


def test_generate_curl_contract(gateway: httpx.Client, torchserve: TorchServe) -> None:
    # curl -X POST 127.0.0.1:8000/generate -H 'Content-Type: application/json' -d '{"passage": "I are a boy"}'
    response = gateway.post(
        "/generate", content=b'{"passage": "I are a boy"}', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 200
    assert list(response.json()) == ["prob"]
    expected = direct(torchserve, "cola", {"text": "I are a boy"}).json()["probabilities"]["acceptable"]
    assert response.json()["prob"] == pytest.approx(expected, abs=1e-6)
    assert response.headers["X-Model-Version"] == "1.0"


def test_predict_curl_contract(gateway: httpx.Client, torchserve: TorchServe) -> None:
    # curl -X POST 127.0.0.1:8000/predict -H 'Content-Type: application/json' -d '{"text": "This app is great"}'
    response = gateway.post(
        "/predict", content=b'{"text": "This app is great"}', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"sentiment", "confidence", "probabilities"}
    assert set(body["probabilities"]) == {"negative", "neutral", "positive"}
    assert body["confidence"] == body["probabilities"][body["sentiment"]]
    assert body["sentiment"] == max(body["probabilities"], key=body["probabilities"].__getitem__)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    expected = direct(torchserve, "sentiment", {"text": "This app is great"}).json()
    assert body["sentiment"] == expected["label"]
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)


# int8 dynamic quantization scales activations per forward pass, so a text's probabilities move slightly with the
# texts batched beside it (up to ~0.01 seen on the tiny models): single calls are compared with that tolerance, and
# the batch with TorchServe's own answer to the same batch exactly.
BATCH_TOLERANCE = 0.03


def test_generate_batch_is_one_request_answered_in_order(gateway: httpx.Client, torchserve: TorchServe) -> None:
    batch = gateway.post("/generate/batch", json={"passages": PASSAGES})
    same_batch = direct(torchserve, "cola", {"texts": PASSAGES}).json()
    singles = [gateway.post("/generate", json={"passage": p}).json()["prob"] for p in PASSAGES]

    assert batch.status_code == 200
    probs = [r["prob"] for r in batch.json()["results"]]
    assert probs == pytest.approx([r["probabilities"]["acceptable"] for r in same_batch], abs=1e-6)
    assert probs == pytest.approx(singles, abs=BATCH_TOLERANCE)


def test_predict_batch_is_one_request_answered_in_order(gateway: httpx.Client, torchserve: TorchServe) -> None:
    batch = gateway.post("/predict/batch", json={"texts": REVIEWS})
    same_batch = direct(torchserve, "sentiment", {"texts": REVIEWS}).json()
    singles = [gateway.post("/predict", json={"text": t}).json() for t in REVIEWS]

    assert batch.status_code == 200
    results = batch.json()["results"]
    assert [r["sentiment"] for r in results] == [r["label"] for r in same_batch]
    for got, want, single in zip(results, same_batch, singles, strict=True):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert got["probabilities"] == pytest.approx(single["probabilities"], abs=BATCH_TOLERANCE)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Ça marche très bien — отлично, 很好, ממש טוב", id="mixed-scripts"),
        pytest.param("love it 😍🔥👍🏽 " * 10, id="emoji"),
        pytest.param("this app is very good and I use it every day " * 100, id="long-truncated"),
        pytest.param("\u200b\u00a0x\u0301", id="zero-width-combining"),
    ],
)
def test_unusual_text_is_classified_not_rejected(gateway: httpx.Client, text: str) -> None:
    assert len(text) <= 5000

    predict = gateway.post("/predict", json={"text": text})
    generate = gateway.post("/generate", json={"passage": text})

    assert predict.status_code == 200, predict.text
    assert generate.status_code == 200, generate.text
    assert 0.0 <= generate.json()["prob"] <= 1.0


def test_ready_checks_the_workers(gateway: httpx.Client) -> None:
    response = gateway.get("/ready")

    assert response.status_code == 200
    assert response.json() == {"ready": True, "models": {"cola": "READY", "sentiment": "READY"}}


def test_unknown_version_is_404(gateway: httpx.Client) -> None:
    response = gateway.post("/generate", json={"passage": "x"}, headers={"X-Model-Version": "9.0"})

    assert response.status_code == 404
    assert response.json() == {"error": "model 'cola' has no version '9.0'", "type": "model_version_not_found"}


def test_invalid_and_oversized_bodies_over_real_http(gateway: httpx.Client) -> None:
    blank = gateway.post("/predict", json={"text": "   "})
    too_long = gateway.post("/predict", json={"text": "x" * 5001})
    too_big = gateway.post("/predict/batch", json={"texts": ["y" * 5000] * 64 * 4})

    assert (blank.status_code, blank.json()["type"]) == (422, "invalid_input")
    assert (too_long.status_code, too_long.json()["type"]) == (422, "invalid_input")
    assert (too_big.status_code, too_big.json()["type"]) == (413, "payload_too_large")


def test_metrics_show_the_traffic(gateway: httpx.Client) -> None:
    gateway.post("/generate", json={"passage": "metrics"})

    text = gateway.get("/metrics").text

    ok = {"method": "POST", "route": "/generate", "status": "200"}
    assert (sample(text, "gateway_requests_total", **ok) or 0) >= 1
    assert (sample(text, "gateway_request_duration_seconds_bucket", **ok, le="+Inf") or 0) >= 1


def test_readme_examples_are_written_from_the_stack_and_drift_is_caught(
    gateway: httpx.Client, tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checker behind `make examples`, run against the real stack (tiny models): answers written from the
    gateway pass the check. With a user's own models (not the recorded reference archives) a probability that moved
    passes and a label that changed fails; with the reference archives in the store (found by their sha256 in the
    record), a probability off by more than the tolerance fails too."""
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{readme_examples.BEGIN}\nstale\n{readme_examples.END}\n\nmore text\n")
    url = str(gateway.base_url).rstrip("/")
    check = ["--url", url, "--readme", str(readme), "--model-store", str(tiny_store)]
    assert readme_examples.main([*check, "--write"]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n")
    assert text.endswith("more text\n")
    shown = readme_examples.shown(text)
    assert [set(a) for a in shown] == [{"prob"}] * 2 + [{"sentiment", "confidence", "probabilities"}] * 2
    assert readme_examples.main(check) == 0

    prob = shown[0]["prob"]
    moved = round(prob + 0.05 if prob < 0.5 else prob - 0.05, 3)
    readme.write_text(text.replace(json.dumps({"prob": prob}), json.dumps({"prob": moved}), 1))
    assert readme_examples.main(check) == 0  # your own models: the same label is what counts
    flipped = round(1 - prob, 3) if abs(prob - 0.5) > 0.01 else round(prob + 0.4, 3)
    readme.write_text(text.replace(json.dumps({"prob": prob}), json.dumps({"prob": flipped}), 1))
    assert readme_examples.main(check) == 1  # another label: fails for any models

    record = tmp_path / "training.json"
    runs = {f"{name}-1.0": {"role": "default", "sha256": sha256(tiny_store / f"{name}-1.0.mar")} for name in TASKS}
    record.write_text(json.dumps({"runs": runs}))
    monkeypatch.setattr(results, "RECORD", record)
    readme.write_text(text.replace(json.dumps({"prob": prob}), json.dumps({"prob": moved}), 1))
    assert readme_examples.main(check) == 1  # the reference archives: every probability to the tolerance


def test_the_readme_has_an_examples_block_of_every_example() -> None:
    shown = readme_examples.shown((REPO / "README.md").read_text())
    assert len(shown) == len(readme_examples.EXAMPLES)


def test_served_quality_scores_every_split_through_the_gateway(gateway: httpx.Client) -> None:
    report = served_quality(str(gateway.base_url).rstrip("/"), default_data_dir(), max_rows=40)
    assert set(report) == {"cola/validation", "sentiment/validation", "sentiment/test", "cola: I are a boy"}
    for split in ("cola/validation", "sentiment/validation", "sentiment/test"):
        assert report[split]["rows"] == 40
        assert 0 <= report[split]["accuracy"] <= 1
    assert 0 <= report["cola: I are a boy"]["prob"] <= 1
