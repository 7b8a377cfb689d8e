"""One typed run report: metrics.json keeps its keys, --from-run reads it back, the card and the plots draw it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from training.arguments import TrainingError, parse_args
from training.calibration import temperature_study
from training.fit import EpochResult, FitResult
from training.int8_check import BatchInvariance, Int8Check, Scored, Served
from training.report import model_card, write_plots
from training.run_report import STUDENT, Packaging, RunReport, Timing, TrainedBy, read_finished_run
from training.tasks import EvaluatedRows, get_task

METRICS_JSON_KEYS = [
    "task", "version", "created", "command", "base_model", "base", "device", "threads", "labels", "metric", "data",
    "rows", "validation_rows", "hyperparameters", "epochs", "best_epoch", "best_validation", "trained_by", "test",
    "quantization", "timing_s", "packaging",
]  # fmt: skip


def scores(mcc: float) -> dict[str, float]:
    return {"accuracy": 0.7, "macro_f1": 0.6, "mcc": mcc}


def a_report(tmp_path: Path) -> RunReport:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], size=40)
    labels = rng.integers(0, 2, size=40).tolist()
    int8 = Served("onnxruntime", True, "per_channel", (), "static")
    chosen = Scored(int8, scores(0.30), drop=0.005, flips=0.025, eligible=True)
    report_only = Scored(replace(int8, activations="dynamic"), scores(0.28), 0.025, 0.05, eligible=False)
    cfg = parse_args(["--task", "cola", "--base-model", "/models/tiny", "--output", str(tmp_path / "run")])
    epochs = [
        EpochResult(1, 0.69, scores(0.20), [[10, 5], [6, 19]], train_s=3.0, eval_s=0.5),
        EpochResult(2, 0.61, scores(0.305), [[11, 4], [5, 20]], train_s=2.9, eval_s=0.4),
    ]
    return RunReport(
        task="cola", version="3.0", created="2026-01-01T00:00:00+00:00", command="python -m training.train --task cola",
        config=cfg, base={"name": "/models/tiny"}, device="cpu", threads=2, labels=("unacceptable", "acceptable"),
        metric="mcc", data_sha256={"data/cola/in_domain_train.tsv": "ab" * 32}, rows={"train": 40, "validation": 40,
        "test": 0}, validation_rows=EvaluatedRows("validation", 40, 42, "cd" * 32),
        fit=FitResult(epochs, best_epoch=2),
        quantization=Int8Check("mcc", 0.01, 8, scores(0.305), [chosen, report_only], chosen,
                               calibration=temperature_study(probs, labels),
                               batch_invariance=BatchInvariance(texts=40, max_abs_delta=0.0)),
        timing=Timing(train_and_eval=6.8, quantization_check=4.0, total=12.0),
        packaging=Packaging(refused=False, archive="cola-3.0.mar", handler={"max_length": 128, **int8.as_dict()}),
        trained_by=TrainedBy(run="/runs/first", command="python -m training.train --task cola --lr 1e-4"),
    )  # fmt: skip


def test_metrics_json_keeps_its_keys_in_order(tmp_path: Path) -> None:
    report = a_report(tmp_path)
    data = report.as_json()
    assert [k for k in METRICS_JSON_KEYS if k in data] == list(data)
    assert "test" not in data  # cola has no labelled test split
    assert data["best_validation"] == data["epochs"][1]["validation"]
    assert data["validation_rows"] == {"split": "validation", "count": 40, "seed": 42, "sha256": "cd" * 32}
    assert data["hyperparameters"]["output"] == str(tmp_path / "run")
    assert data["hyperparameters"]["keep_fp32"] == ()
    assert data["packaging"]["handler"]["activations"] == "static"
    assert data["quantization"]["chosen"] == data["quantization"]["candidates"][0]
    assert data["timing_s"] == {"train_and_eval": 6.8, "quantization_check": 4.0, "total": 12.0}
    refused = replace(report, packaging=Packaging(refused=True), timing=replace(report.timing, total=None))
    assert refused.as_json()["packaging"] == {"refused": True}
    assert "total" not in refused.as_json()["timing_s"]


def test_a_finished_run_reads_back_what_it_wrote(tmp_path: Path) -> None:
    report = a_report(tmp_path)
    folder = tmp_path / "finished"
    (folder / "best").mkdir(parents=True)
    (folder / "best" / "config.json").write_text("{}")
    (folder / "metrics.json").write_text(json.dumps(report.as_json()))
    prior = read_finished_run(folder, get_task("cola"))
    assert prior.fit == report.fit
    generic = {"epochs": 3, "lr": 5e-5, "warmup_ratio": 0.0}  # a folder as the base: the generic recipe
    trained = {"base_model": "/models/tiny", **generic, "precision": "auto", "schedule_epochs": 3, "augment": "none"}
    trained |= STUDENT  # not a student: none of a student's settings
    assert prior.trained == trained
    assert (prior.teacher, prior.base) == (None, None)
    assert prior.trained_by == TrainedBy(str(folder), report.command)
    older = report.as_json()  # a run from before --schedule-epochs, --augment and --student-of
    for name in ("schedule_epochs", "augment", *STUDENT):
        del older["hyperparameters"][name]
    (folder / "metrics.json").write_text(json.dumps(older))
    assert read_finished_run(folder, get_task("cola")).trained == trained
    with pytest.raises(TrainingError, match="is not a finished sentiment run"):
        read_finished_run(folder, get_task("sentiment"))
    (folder / "metrics.json").write_text(json.dumps({"task": "cola"}))
    with pytest.raises(TrainingError, match=r"metrics\.json lacks 'epochs'"):
        read_finished_run(folder, get_task("cola"))


def test_the_card_and_the_plots_draw_the_report(tmp_path: Path) -> None:
    report = a_report(tmp_path)
    card = model_card(report)
    assert card.startswith("# cola 3.0\n")
    assert "| 2 (best) | 0.6100 | 0.3050 | 0.7000 |" in card
    assert (
        "| int8 per_channel, static activations **(served)** | validation | 0.3000 | 0.7000 | +0.0050 | 2.5% |" in card
    )
    assert "int8 per_channel, dynamic activations (reported only)" in card
    assert "Fine-tuned earlier by `python -m training.train --task cola --lr 1e-4` (/runs/first)" in card
    assert "Batch invariance: the largest change of any probability" in card
    assert "## Calibration" in card
    write_plots(report, tmp_path)
    for name in ("metric_per_epoch.png", "confusion_matrix.png", "reliability.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
