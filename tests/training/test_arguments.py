"""The training command line: one flag per Config field, defaults resolved from the task, the base and the
environment, bad values refused with one line."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from training.arguments import REPO, Config, TrainingError, parse_args, parser
from training.tasks import TASKS

FLAGS = {
    "--task", "--base-model", "--data-dir", "--output", "--model-store", "--version", "--epochs", "--schedule-epochs",
    "--batch-size",
    "--lr", "--weight-decay", "--warmup-ratio", "--seed", "--max-length", "--max-train-rows", "--max-eval-rows",
    "--max-int8-drop", "--quantization", "--keep-fp32", "--engine", "--augment", "--no-group-by-length", "--int8-study",
    "--int8-per-module",
    "--from-run", "--teacher-logits", "--distill-alpha", "--distill-temperature", "--student-of", "--student-layers",
    "--student-depth", "--hidden-loss-weight", "--log-every", "--precision",
}  # fmt: skip


def test_the_parser_has_one_flag_per_config_field_each_with_its_help() -> None:
    actions = [a for a in parser()._actions if a.dest != "help"]
    assert {flag for a in actions for flag in a.option_strings} == FLAGS
    assert [a.dest for a in actions] == [f.name for f in fields(Config)]
    assert all(a.help for a in actions if a.dest not in ("batch_size", "weight_decay", "seed"))


def test_defaults_come_from_the_task_recipe_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BASE_MODEL", "MODEL_STORE", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    cfg = parse_args(["--task", "cola"])
    recipe = TASKS["cola"].recipe(TASKS["cola"].base_model)
    assert (cfg.base_model, cfg.epochs, cfg.lr, cfg.warmup_ratio) == ("mpnet", recipe.epochs, recipe.lr, 0.1)
    assert (cfg.batch_size, cfg.max_length, cfg.max_int8_drop, cfg.seed) == (32, 128, 0.01, 42)
    assert (cfg.quantization, cfg.engine, cfg.precision) == ("auto", "onnxruntime", "auto")
    assert cfg.keep_fp32 == ()
    assert cfg.group_by_length
    assert not cfg.int8_study
    assert cfg.model_store == REPO / "model_store"
    assert cfg.output.parent == REPO / "artifacts" / "cola"

    monkeypatch.setenv("BASE_MODEL", "minilm")
    monkeypatch.setenv("MODEL_STORE", "/srv/store")
    cfg = parse_args(["--task", "cola"])
    assert (cfg.base_model, cfg.epochs, cfg.lr, cfg.warmup_ratio) == ("minilm", 3, 5e-5, 0.0)
    assert cfg.schedule_epochs == 3
    assert cfg.model_store == Path("/srv/store")


def test_a_recipe_may_stop_part_way_through_a_longer_schedule_and_flags_override_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BASE_MODEL", raising=False)
    cfg = parse_args(["--task", "sentiment"])
    assert (cfg.epochs, cfg.schedule_epochs) == (1, 2)
    assert parse_args(["--task", "sentiment", "--epochs", "3"]).schedule_epochs == 3  # a schedule of its own epochs
    cfg = parse_args(["--task", "sentiment", "--epochs", "2", "--schedule-epochs", "5"])
    assert (cfg.epochs, cfg.schedule_epochs) == (2, 5)
    assert parse_args(["--task", "cola", "--schedule-epochs", "4"]).schedule_epochs == 4


def test_the_augmentation_comes_from_the_recipe_unless_a_teacher_or_a_flag_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BASE_MODEL", raising=False)
    assert parse_args(["--task", "cola"]).augment == TASKS["cola"].recipe("mpnet").augment == "agreement"
    assert parse_args(["--task", "cola", "--base-model", "minilm"]).augment == "none"
    assert parse_args(["--task", "cola", "--base-model", "minilm", "--augment", "agreement"]).augment == "agreement"
    assert parse_args(["--task", "cola", "--augment", "none"]).augment == "none"
    assert parse_args(["--task", "cola", "--teacher-logits", "t.jsonl"]).augment == "none"
    assert parse_args(["--task", "sentiment"]).augment == "none"


def test_a_student_names_its_teacher_or_takes_the_served_default_and_trains_by_the_default_recipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BASE_MODEL", "minilm")  # a student's base is its teacher, whatever the environment says
    cfg = parse_args(["--task", "cola", "--student-of"])
    recipe = TASKS["cola"].recipe(TASKS["cola"].base_model)
    assert (cfg.student_of, cfg.student_layers, cfg.student_depth, cfg.hidden_loss_weight) == ("default", (), None, 0)
    assert (cfg.epochs, cfg.lr, cfg.warmup_ratio, cfg.augment) == (recipe.epochs, recipe.lr, 0.1, "agreement")
    cfg = parse_args(["--task", "cola", "--student-of", "cola-1.0", "--student-layers", "0", "3", "7", "11"])
    assert (cfg.student_of, cfg.student_layers, cfg.student_depth) == ("cola-1.0", (0, 3, 7, 11), 4)
    cfg = parse_args(["--task", "cola", "--student-of", "--student-depth", "8", "--hidden-loss-weight", "0.1"])
    assert (cfg.student_of, cfg.student_depth, cfg.hidden_loss_weight) == ("default", 8, 0.1)
    assert parse_args(["--task", "sentiment", "--student-of", "--epochs", "3"]).epochs == 3


def test_flags_override_the_defaults() -> None:
    cfg = parse_args(
        ["--task", "sentiment", "--base-model", "/models/x", "--epochs", "1", "--lr", "1e-4", "--keep-fp32", "a", "b",
         "--no-group-by-length", "--int8-study", "--from-run", "/runs/r", "--precision", "fp32", "--version", "2.1"]
    )  # fmt: skip
    assert (cfg.base_model, cfg.epochs, cfg.lr, cfg.keep_fp32) == ("/models/x", 1, 1e-4, ("a", "b"))
    assert not cfg.group_by_length
    assert cfg.int8_study
    assert (cfg.from_run, cfg.precision, cfg.version) == (Path("/runs/r"), "fp32", "2.1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs must be a positive integer, not 0"),
        (["--max-eval-rows", "-3"], "--max-eval-rows must be a positive integer, not -3"),
        (["--version", "v2"], "--version 'v2' must look like 1, 1.0 or 1.0.2"),
        (["--schedule-epochs", "0"], "--schedule-epochs must be a positive integer, not 0"),
        (["--task", "sentiment", "--augment", "agreement"], "--augment agreement does not apply to task sentiment"),
        (["--augment", "agreement", "--teacher-logits", "t.jsonl"], "--teacher-logits has logits for the training"),
        (["--epochs", "3", "--schedule-epochs", "2"], r"--schedule-epochs \(2\) must be at least --epochs \(3\)"),
        (["--student-depth", "6"], "--student-depth applies to a student: add --student-of"),
        (["--hidden-loss-weight", "1"], "--hidden-loss-weight applies to a student: add --student-of"),
        (
            ["--student-of", "--base-model", "minilm"],
            "--student-of starts from its teacher's layers and soft labels: drop --base-model",
        ),
        (["--student-of", "--teacher-logits", "t.jsonl"], "drop --teacher-logits"),
        (["--student-of", "--from-run", "r"], "drop --from-run"),
        (["--student-of", "--student-depth", "0"], "--student-depth must be a positive integer, not 0"),
        (["--student-of", "--hidden-loss-weight", "-1"], "--hidden-loss-weight must be 0 or more, not -1.0"),
        (
            ["--student-of", "--student-depth", "3", "--student-layers", "0", "6"],
            "--student-depth 3 does not match the 2 --student-layers",
        ),
    ],
)
def test_bad_values_are_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        parse_args(["--task", "cola", *argv])


def test_an_unknown_task_is_a_training_error() -> None:
    with pytest.raises(TrainingError, match="unknown task 'mnli'"):
        parse_args(["--task", "mnli"])
