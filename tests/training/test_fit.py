"""Fine-tuning a tiny random BERT on a few dozen real rows: typed epoch results, the best epoch kept on disk."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from training.arguments import parse_args
from training.fit import fit, optimizer_for
from training.tasks import get_task


def test_fit_trains_every_epoch_and_keeps_the_best(
    tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    task = get_task("cola")
    argv = ["--task", "cola", "--base-model", str(tiny_models["cola"]), "--epochs", "2", "--batch-size", "8"]
    cfg = replace(parse_args([*argv, "--max-length", "64"]), precision="fp32")
    splits = task.load(data_dir)
    splits.train = splits.train.subset(32, seed=0)
    splits.validation = splits.validation.subset(16, seed=0)
    best_dir = tmp_path / "best"

    result = fit(task, splits, cfg, torch.device("cpu"), best_dir, base=str(tiny_models["cola"]))

    assert [row.epoch for row in result.epochs] == [1, 2]
    scores = [row.validation[task.metric] for row in result.epochs]
    assert result.best_epoch == 1 + scores.index(max(scores))  # the first of equal scores
    assert result.best.validation == result.epochs[result.best_epoch - 1].validation
    for row in result.epochs:
        assert sum(map(sum, row.confusion_matrix)) == 16
        assert row.train_loss > 0
    saved = AutoModelForSequenceClassification.from_pretrained(best_dir)
    assert saved.config.id2label == {0: "unacceptable", 1: "acceptable"}


def test_weight_decay_spares_biases_and_norms(tiny_models: dict[str, Path]) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["cola"])
    cfg = parse_args(["--task", "cola", "--weight-decay", "0.05"])
    decay, no_decay = optimizer_for(model, cfg).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)].lower() for p in no_decay["params"])
    assert not any(names[id(p)].endswith("bias") for p in decay["params"])


def test_stopping_part_way_through_a_schedule_repeats_that_part_of_the_full_run(
    tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    """``--epochs 1 --schedule-epochs 2`` trains exactly the first epoch of a two-epoch run (the served sentiment
    recipe relies on it); a one-epoch schedule decays faster and trains another model."""
    task = get_task("cola")
    base = str(tiny_models["cola"])
    splits = task.load(data_dir)
    splits.train = splits.train.subset(32, seed=0)
    splits.validation = splits.validation.subset(16, seed=0)

    def first_epoch_loss(epochs: int, schedule: int) -> float:
        argv = ["--task", "cola", "--base-model", base, "--batch-size", "8", "--lr", "1e-3", "--warmup-ratio", "0.1"]
        cfg = parse_args([*argv, "--epochs", str(epochs), "--schedule-epochs", str(schedule), "--max-length", "64"])
        result = fit(task, splits, replace(cfg, precision="fp32"), torch.device("cpu"), tmp_path / "best", base=base)
        assert [row.epoch for row in result.epochs] == list(range(1, epochs + 1))
        return result.epochs[0].train_loss

    full = first_epoch_loss(2, 2)
    assert first_epoch_loss(1, 2) == full
    assert first_epoch_loss(1, 1) != full
