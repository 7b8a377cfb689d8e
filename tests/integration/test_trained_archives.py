"""Archives made by the real training run serve through a real TorchServe (the path `make serve` takes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from stack.torchserve import TorchServe
from training.tasks import get_task
from training.train import main

pytestmark = pytest.mark.integration

SMALL = ["--epochs", "1", "--batch-size", "8", "--max-train-rows", "24", "--max-eval-rows", "16", "--max-length", "64"]


def test_trained_archives_serve_through_torchserve(
    tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path, torchserve_factory: Callable[[Path], TorchServe]
) -> None:
    store = tmp_path / "store"
    for task in ("cola", "sentiment"):
        args = ["--task", task, "--base-model", str(tiny_models[task]), "--data-dir", str(data_dir)]
        assert main([*args, "--output", str(tmp_path / task), "--model-store", str(store), *SMALL]) == 0

    ts = torchserve_factory(store)
    headers = {"Authorization": f"Bearer {ts.keys()['inference']}"}
    for task in ("cola", "sentiment"):
        response = httpx.post(
            f"{ts.inference_url}/predictions/{task}", json={"texts": ["The app works.", "Him go store."]},
            headers=headers, timeout=30,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == "1.0"
        for row in response.json():
            assert list(row["probabilities"]) == list(get_task(task).labels)
            assert row["label"] in get_task(task).labels
            assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
