"""Soft labels: the loss, the logits file (written by a real tiny teacher, refused when it belongs to other data) and
a real student run trained on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from training.arguments import TrainingError
from training.distill import distillation_loss, main, read, text_key
from training.tasks import Examples, Splits, get_task
from training.train import main as train_main


def test_the_loss_is_cross_entropy_without_the_soft_share_and_zero_soft_loss_when_student_equals_teacher() -> None:
    student = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    teacher = torch.tensor([[-1.0, 3.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    hard = F.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha=0.0, temperature=2.0), hard)
    assert distillation_loss(student, student, labels, alpha=1.0, temperature=2.0).item() == pytest.approx(0, abs=1e-7)
    # the soft term pulls towards the teacher: a student closer to it has the lower loss
    closer = distillation_loss(teacher * 0.9, teacher, labels, alpha=1.0, temperature=2.0)
    assert closer < distillation_loss(student, teacher, labels, alpha=1.0, temperature=2.0)


def test_text_keys_are_stable_short_digests_that_do_not_carry_the_text() -> None:
    assert text_key("I are a boy") == text_key("I are a boy") != text_key("I am a boy")
    assert len(text_key("x" * 10_000)) == 16
    assert "boy" not in text_key("I are a boy")


@pytest.fixture(scope="module")
def cola_logits(tiny_models: dict[str, Path], data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "cola.jsonl"
    args = ["--task", "cola", "--teacher", str(tiny_models["cola"]), "--data-dir", str(data_dir), "--output", str(out)]
    assert main([*args, "--max-length", "32"]) == 0
    return out


def test_the_teacher_command_writes_one_logit_row_per_training_text_with_its_facts(
    cola_logits: Path, data_dir: Path
) -> None:
    splits = get_task("cola").load(data_dir)
    header, *rows = (json.loads(line) for line in cola_logits.read_text().splitlines())
    assert header["task"] == "cola"
    assert header["train_rows"] == len(splits.train)
    assert header["max_length"] == 32
    assert header["data_sha256"] == splits.sources
    assert 0 <= header["teacher"]["train_accuracy"] <= 1
    assert len(rows) == len({text_key(t) for t in splits.train.texts})
    logits, _ = read(cola_logits, task="cola", splits=splits)
    assert logits.shape == (len(splits.train), 2)
    assert np.isfinite(logits).all()


def test_logits_for_another_task_other_data_or_missing_texts_are_refused(cola_logits: Path, data_dir: Path) -> None:
    splits = get_task("cola").load(data_dir)
    with pytest.raises(TrainingError, match="not a sentiment logits file"):
        read(cola_logits, task="sentiment", splits=splits)
    elsewhere = {f"/another/clone/data/cola/{Path(k).name}": v for k, v in splits.sources.items()}
    moved = Splits(splits.train, splits.validation, None, sources=elsewhere)
    assert read(cola_logits, task="cola", splits=moved)[0].shape == (len(splits.train), 2)  # same files elsewhere
    other = Splits(splits.train, splits.validation, None, sources={"other.tsv": "0" * 64})
    with pytest.raises(TrainingError, match="other data files"):
        read(cola_logits, task="cola", splits=other)
    unseen = Splits(Examples(["a sentence no teacher saw"], [1]), splits.validation, None, sources=splits.sources)
    with pytest.raises(TrainingError, match="lacks some of this run's training texts"):
        read(cola_logits, task="cola", splits=unseen)


def test_a_student_trains_on_the_soft_labels_and_its_report_and_card_name_the_teacher(
    cola_logits: Path, tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    out, store = tmp_path / "run", tmp_path / "store"
    args = ["--task", "cola", "--base-model", str(tiny_models["cola"]), "--data-dir", str(data_dir)]
    small = ["--epochs", "1", "--batch-size", "8", "--max-train-rows", "24", "--max-eval-rows", "16"]
    soft = ["--teacher-logits", str(cola_logits), "--distill-alpha", "0.7"]
    assert train_main([*args, "--output", str(out), "--model-store", str(store), *small, *soft]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["task"] == "cola"
    assert metrics["hyperparameters"]["distill_alpha"] == 0.7
    assert metrics["epochs"][0]["train_loss"] > 0
    assert "Distilled (soft-label share 0.7, temperature 2)" in (store / "cola-1.0.md").read_text()


def test_a_bad_logits_file_or_distillation_setting_stops_the_run_with_one_line(
    tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    args = ["--task", "cola", "--base-model", str(tiny_models["cola"]), "--data-dir", str(data_dir)]
    args += ["--output", str(tmp_path / "run"), "--model-store", str(tmp_path / "store")]
    assert train_main([*args, "--teacher-logits", str(garbage)]) == 2
    assert "not a readable logits file" in capsys.readouterr().err
    assert train_main([*args, "--distill-alpha", "1.5"]) == 2
    assert "--distill-alpha must be within [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()
