"""A training run's report, typed: what ``metrics.json``, the model card and the plots are all made from.

``metrics.json`` keeps its keys (the gateway's catalogue reads ``best_validation``, packaging reads
``packaging.handler``, ``--from-run`` reads ``hyperparameters``, ``epochs`` and ``command``): :meth:`RunReport.as_json`
writes them in the order they have always had.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from training.arguments import Config, TrainingError
from training.augment import NONE
from training.fit import EpochResult, FitResult
from training.int8_check import Int8Check
from training.tasks import EvaluatedRows, Task

RETRAINED = ("base_model", "epochs", "lr", "warmup_ratio", "precision")  # what --from-run takes from the first run
# a student's, so that its report still names its teacher (runs from before students had none of them)
STUDENT = {"student_of": None, "student_layers": (), "student_depth": None, "hidden_loss_weight": 0.0}


@dataclass(frozen=True)
class TrainedBy:
    """With ``--from-run``: the run that fine-tuned the model this run checked and packaged."""

    run: str
    command: str


@dataclass(frozen=True)
class Timing:
    train_and_eval: float
    quantization_check: float
    total: float | None = None  # the whole run, once packaged


@dataclass(frozen=True)
class Packaging:
    refused: bool  # int8 lost more than --max-int8-drop with every setting
    archive: str | None = None
    handler: dict[str, Any] | None = None  # the archive's model-config.yaml handler section


@dataclass(frozen=True)
class RunReport:
    task: str
    version: str
    created: str  # ISO 8601, UTC, seconds
    command: str
    config: Config
    base: dict[str, str]  # training.base_models.resolve's facts about the base model
    device: str
    threads: int
    labels: tuple[str, ...]
    metric: str
    data_sha256: dict[str, str]  # data file (or hub dataset) -> sha256 (or revision)
    rows: dict[str, int]  # split -> rows used
    fit: FitResult
    quantization: Int8Check
    timing: Timing
    packaging: Packaging
    trained_by: TrainedBy | None = None
    test: dict[str, float] | None = None  # the best epoch on the test split, fp32 (tasks that have one)
    teacher: dict[str, Any] | None = None  # with --teacher-logits: the logits file's header (training.distill)
    validation_rows: EvaluatedRows | None = None  # which validation rows were evaluated (the publish gate redraws them)

    @property
    def best_validation(self) -> dict[str, float]:
        return self.fit.best.validation

    def hyperparameters(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()}

    def as_json(self) -> dict[str, Any]:
        """``metrics.json``."""
        out: dict[str, Any] = {
            "task": self.task,
            "version": self.version,
            "created": self.created,
            "command": self.command,
            "base_model": self.config.base_model,
            "base": self.base,
            "device": self.device,
            "threads": self.threads,
            "labels": list(self.labels),
            "metric": self.metric,
            "data": {"dir": str(self.config.data_dir), "sha256": self.data_sha256},
            "rows": self.rows,
            **({"validation_rows": asdict(self.validation_rows)} if self.validation_rows else {}),
            "hyperparameters": self.hyperparameters(),
            "epochs": [asdict(row) for row in self.fit.epochs],
            "best_epoch": self.fit.best_epoch,
            "best_validation": self.best_validation,
        }
        if self.trained_by is not None:
            out["trained_by"] = asdict(self.trained_by)
        if self.teacher is not None:
            out["teacher"] = self.teacher
        if self.test is not None:
            out["test"] = self.test
        out["quantization"] = self.quantization.as_dict()
        out["timing_s"] = {k: v for k, v in asdict(self.timing).items() if v is not None}
        out["packaging"] = {k: v for k, v in asdict(self.packaging).items() if v is not None}
        return out


@dataclass(frozen=True)
class FinishedRun:
    """What ``--from-run`` reuses of a finished run: its training settings, its epochs and its command."""

    folder: Path
    trained: dict[str, Any]  # RETRAINED's values
    fit: FitResult
    command: str
    teacher: dict[str, Any] | None = None  # a student's: its report's "teacher"
    base: dict[str, str] | None = None  # a student's: its report's "base" (which layers of which teacher)

    @property
    def trained_by(self) -> TrainedBy:
        return TrainedBy(run=str(self.folder), command=self.command)


def read_finished_run(folder: Path, task: Task) -> FinishedRun:
    """A finished run's metrics.json, checked to be this task's and to have its best/ model."""
    try:
        prior = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"--from-run {folder}: no readable metrics.json ({exc})") from None
    if not isinstance(prior, dict) or prior.get("task") != task.name or not (folder / "best" / "config.json").is_file():
        raise TrainingError(f"--from-run {folder} is not a finished {task.name} run (metrics.json + best/)")
    names = {f.name for f in fields(EpochResult)}
    try:
        epochs = [EpochResult(**{k: v for k, v in row.items() if k in names}) for row in prior["epochs"]]
        hyper = prior["hyperparameters"]
        trained = {k: hyper[k] for k in RETRAINED}
        # runs from before --schedule-epochs and --augment decayed over exactly their epochs, with no extra rows
        trained["schedule_epochs"] = hyper.get("schedule_epochs", hyper["epochs"])
        trained["augment"] = hyper.get("augment", NONE)
        trained |= {k: hyper.get(k, default) for k, default in STUDENT.items()}
        trained["student_layers"] = tuple(trained["student_layers"])
        student = (prior.get("teacher"), prior.get("base")) if trained["student_of"] else (None, None)
        return FinishedRun(folder, trained, FitResult(epochs, prior["best_epoch"]), prior["command"], *student)
    except (KeyError, TypeError, AttributeError) as exc:
        raise TrainingError(
            f"--from-run {folder}: metrics.json lacks {exc} (not a run of this training code)"
        ) from None
