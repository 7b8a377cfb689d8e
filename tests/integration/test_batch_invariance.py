"""A text's answer does not depend on what else is in its batch: archives serve static int8 (activation scales
calibrated at packaging), so a text sent alone, in a 64-text request, or among concurrent requests that TorchServe
batches together gets the same probabilities (|delta| <= 1e-5), whatever the lengths of its companions."""

from __future__ import annotations

import random
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from stack.torchserve import TorchServe
from tests.tiny_models import _WORDS

pytestmark = pytest.mark.integration

TOLERANCE = 1e-5


def texts_of_every_length(count: int, *, seed: int) -> list[str]:
    """From one word to long enough to be truncated at the model's 128 tokens."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(_WORDS, k=rng.choice([1, 2, 3, 5, 8, 13, 21, 40, 80, 200]))) for _ in range(count)]


def classify(ts: TorchServe, model: str, body: dict[str, object]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ts.keys()['inference']}"}
    response = httpx.post(f"{ts.inference_url}/predictions/{model}", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def max_delta(got: list[dict[str, float]], want: list[dict[str, float]]) -> float:
    return max(abs(g[k] - w[k]) for g, w in zip(got, want, strict=True) for k in w)


@pytest.mark.parametrize("model", ["cola", "sentiment"])
def test_alone_batched_and_concurrent_answers_are_the_same(torchserve: TorchServe, model: str) -> None:
    texts = texts_of_every_length(64, seed=7)
    alone = [classify(torchserve, model, {"text": t}).json()["probabilities"] for t in texts]

    in_one_request = [row["probabilities"] for row in classify(torchserve, model, {"texts": texts}).json()]
    assert max_delta(in_one_request, alone) <= TOLERANCE

    reversed_request = [row["probabilities"] for row in classify(torchserve, model, {"texts": texts[::-1]}).json()]
    assert max_delta(reversed_request[::-1], alone) <= TOLERANCE

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda t: classify(torchserve, model, {"text": t}), texts))
    assert max(int(r.headers["X-Batch-Size"]) for r in responses) > 1, "TorchServe never batched: test is void"
    assert max_delta([r.json()["probabilities"] for r in responses], alone) <= TOLERANCE


def test_the_served_archives_are_static_int8(tiny_store: Path) -> None:
    """The invariance above is a property of static int8 (tests/handlers show dynamic int8 lacks it): the fixture's
    archives are what packaging builds by default, so the test above is about the served default."""
    for archive in sorted(tiny_store.glob("*.mar")):
        with zipfile.ZipFile(archive) as zf:
            handler = yaml.safe_load(zf.read("model-config.yaml"))["handler"]
        assert (handler["engine"], handler["quantize"], handler["activations"]) == ("onnxruntime", True, "static")
