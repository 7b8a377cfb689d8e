"""`python -m training.stand_in`: the real packaging path on an untrained head, with the served defaults' settings."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import yaml

from stack import results
from training import stand_in


def test_a_stand_in_is_packaged_like_the_default_and_says_what_it_is(
    tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    argv = ["--task", "cola", "--model-store", str(out), "--base-model", str(tiny_models["cola"])]
    assert stand_in.main([*argv, "--data-dir", str(data_dir)]) == 0
    with zipfile.ZipFile(out / "cola-1.0.mar") as mar:
        names = set(mar.namelist())
        handler = yaml.safe_load(mar.read("model-config.yaml"))["handler"]
        config = json.loads(mar.read("config.json"))
        report = json.loads(mar.read("metrics.json"))
        card = mar.read("MODEL_CARD.md").decode()
    assert {"model.onnx", "tokenizer.json", "handlers/text_classification.py"} <= names
    assert "model.safetensors" not in names
    assert config["id2label"] == {"0": "unacceptable", "1": "acceptable"}
    assert handler["activations"] == "static"
    assert handler["keep_fp32"] == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]
    assert report["stand_in"] is True
    assert report["trained"] is False
    assert "untrained" in card
    assert "never publish" in card


def test_the_stand_ins_keep_in_fp32_what_the_served_defaults_keep() -> None:
    """cola's default keeps one FFN down-projection per layer of the 12-layer MPNet; sentiment's keeps none."""
    defaults = {run["task"]: run for run in results.load()["runs"].values() if run["role"] == "default"}
    assert stand_in.KEEP_FP32 == {"cola": "ffn_out", "sentiment": None}
    assert defaults["cola"]["fp32_modules"] == 12
    assert defaults["sentiment"]["fp32_modules"] == 0
