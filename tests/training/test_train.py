"""Real training runs of a tiny random BERT on a few dozen rows of each real dataset, and the ways a run fails."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from handlers.text_classification import load, predict, settings_from
from torchserve_protocol.layout import REPO
from training.package import main as package_main
from training.tasks import TASKS, get_task, rows_sha256
from training.train import main

SMALL = ["--epochs", "2", "--batch-size", "8", "--max-train-rows", "40", "--max-eval-rows", "24", "--max-length", "64"]


def train(task: str, base: Path, data_dir: Path, out: Path, store: Path, *extra: str) -> int:
    args = ["--task", task, "--base-model", str(base), "--data-dir", str(data_dir)]
    return main([*args, "--output", str(out), "--model-store", str(store), *SMALL, *extra])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1, err_lines
    return err_lines[0]


@pytest.mark.parametrize("task", ["cola", "sentiment"])
def test_training_run_reports_and_packages_a_loadable_archive(
    task: str, tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    out, store = tmp_path / "run", tmp_path / "store"
    assert train(task, tiny_models[task], data_dir, out, store) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert metrics["best_epoch"] in (1, 2)
    assert metrics["metric"] == TASKS[task].metric
    assert metrics["rows"]["train"] == 40
    assert metrics["rows"]["validation"] == 24
    evaluated = get_task(task).load(data_dir).validation.subset(24, seed=42)  # what the publish gate draws again
    recorded = {"split": "validation", "count": 24, "seed": 42, "sha256": rows_sha256(evaluated)}
    assert metrics["validation_rows"] == recorded
    assert all(len(digest) == 64 for digest in metrics["data"]["sha256"].values())
    assert metrics["hyperparameters"]["lr"] == 5e-5  # the generic recipe: the base is a folder, not a short name
    assert metrics["quantization"]["chosen"]["drop"] <= 0.01
    assert "fp32" in metrics["quantization"]
    if task == "sentiment":
        assert set(metrics["test"]) >= {"accuracy", "macro_f1"}
        assert "test" in metrics["quantization"]["chosen"]
    for name in ("metric_per_epoch.png", "confusion_matrix.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")

    archive = store / f"{task}-1.0.mar"
    card = (store / f"{task}-1.0.md").read_text()
    assert card.startswith(f"# {task} 1.0")
    assert "int8" in card
    assert sorted(p.name for p in store.iterdir()) == [f"{task}-1.0.mar", f"{task}-1.0.md"]

    extracted = tmp_path / "extracted"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(extracted)
    assert (extracted / "MODEL_CARD.md").read_text() == card
    config = yaml.safe_load((extracted / "model-config.yaml").read_text())
    settings = settings_from(config["handler"])
    assert settings.quantization == metrics["packaging"]["handler"]["quantization"]
    assert settings.engine == "onnxruntime" == metrics["quantization"]["chosen"]["served"]["engine"]
    assert (extracted / "model.onnx").stat().st_size > 0  # the int8 graph the quality check measured
    loaded = load(extracted, settings=settings)
    assert loaded.labels == list(get_task(task).labels)
    probs = predict(loaded, ["The app works.", "Who did you see?"], max_length=settings.max_length)
    assert probs.shape == (2, len(loaded.labels))

    # re-packaging the run's model (e.g. with a newer handler) keeps the int8 setting its check passed
    assert package_main(["--model-dir", str(out / "best"), "--name", task, "--model-store", str(store)]) == 0
    with zipfile.ZipFile(store / f"{task}-2.0.mar") as zf:
        repackaged = yaml.safe_load(zf.read("model-config.yaml"))
    assert repackaged["handler"] == config["handler"] == metrics["packaging"]["handler"]


def test_second_run_gets_the_next_version(tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert train("cola", tiny_models["cola"], data_dir, tmp_path / "a", store, "--epochs", "1") == 0
    assert train("cola", tiny_models["cola"], data_dir, tmp_path / "b", store, "--epochs", "1") == 0
    assert sorted(p.name for p in store.glob("*.mar")) == ["cola-1.0.mar", "cola-2.0.mar"]
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["version"] == "2.0"


def test_a_finished_run_is_checked_and_packaged_again_without_training(
    tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    extra = ["--lr", "1e-4", "--augment", "agreement"]
    assert train("cola", tiny_models["cola"], data_dir, tmp_path / "run", store, *extra) == 0
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert first["rows"]["train"] == 40 + first["rows"]["augmented"] > 40  # agreement errors made from the 40
    assert f"{first['rows']['augmented']} of the train rows were made" in (store / "cola-1.0.md").read_text()
    args = ["--task", "cola", "--data-dir", str(data_dir), "--output", str(tmp_path / "again"), "--model-store"]
    assert main([*args, str(store), "--from-run", str(tmp_path / "run"), "--max-eval-rows", "24"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["epochs"] == first["epochs"]  # not trained again: the first run's history
    assert again["hyperparameters"]["lr"] == 1e-4  # the settings it was trained with, not today's defaults
    assert again["hyperparameters"]["augment"] == "agreement"
    assert again["trained_by"]["run"] == str(tmp_path / "run")
    assert (store / "cola-2.0.mar").is_file()
    assert "Fine-tuned earlier by" in (store / "cola-2.0.md").read_text()


def test_int8_drop_bound_refuses_packaging(
    tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    code = train(
        "cola", tiny_models["cola"], data_dir, tmp_path / "run", store, "--epochs", "1", "--max-int8-drop", "-1"
    )
    assert code == 3
    assert "--max-int8-drop" in one_line_error(capsys)
    assert not store.exists() or not any(store.iterdir())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["packaging"] == {"refused": True}


def bad_reviews(tmp_path: Path) -> Path:
    data = tmp_path / "bad-data"
    (data / "google_play_reviews").mkdir(parents=True)
    (data / "google_play_reviews" / "reviews.csv").write_text("text,stars\nGreat app,5\nCrashes,1\n")
    return data


def unreadable_model(tmp_path: Path) -> Path:
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    return folder


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing data dir", "does not exist"),
        ("missing cola file", "missing CoLA file"),
        ("wrong columns", "lacks column(s) content, score"),
        ("unknown task", "unknown task 'mnli'"),
        ("unreadable base model", "cannot load base model"),
    ],
)
def test_bad_input_fails_with_one_line_and_an_empty_store(
    case: str,
    expected: str,
    tiny_models: dict[str, Path],
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    task, base, data = "cola", tiny_models["cola"], data_dir
    if case == "missing data dir":
        data = tmp_path / "nowhere"
    elif case == "missing cola file":
        data = tmp_path / "empty-data"
        (data / "cola").mkdir(parents=True)
        (data / "cola" / "in_domain_train.tsv").write_text("gj04\t1\t\tA sentence.\n")
    elif case == "wrong columns":
        task, base, data = "sentiment", tiny_models["sentiment"], bad_reviews(tmp_path)
    elif case == "unknown task":
        task = "mnli"
    else:
        base = unreadable_model(tmp_path)
    store = tmp_path / "store"
    assert train(task, base, data, tmp_path / "run", store) == 2
    assert expected in one_line_error(capsys)
    assert not store.exists()


def test_command_line_help_and_exit_code(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "training.train"]
    shown = subprocess.run([*cmd, "--help"], cwd=REPO, capture_output=True, text=True, check=False)
    assert shown.returncode == 0
    assert "--max-int8-drop" in shown.stdout
    failed = subprocess.run(
        [*cmd, "--task", "nope", "--model-store", str(tmp_path / "store")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == ["error: unknown task 'nope'; expected one of cola, sentiment"]
