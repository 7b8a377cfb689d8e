"""The training command line: one typed :class:`Config`, whose fields carry their flags, help texts and defaults.

Each option is written once, as a field; :func:`parser` builds the argparse parser from the fields (what
``--help`` shows and what the configuration reference lists) and :func:`parse_args` turns a command line into a
:class:`Config` with every value resolved. A default that depends on the task, the base model or the environment
is ``None`` on the command line and filled in by :func:`parse_args`.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from handlers.text_classification import ENGINES
from torchserve_protocol.archives import VERSION_RE
from torchserve_protocol.layout import REPO, default_model_store
from training.augment import AUGMENTATIONS, NONE
from training.base_models import BASE_MODELS
from training.tasks import TASKS, DataError, default_data_dir, get_task

PROG = "python -m training.train"
DESCRIPTION = (
    "Fine-tune a sequence classifier for one task, evaluate every epoch, keep the best, check int8, package a .mar."
)
POSITIVE = ("epochs", "schedule_epochs", "batch_size", "max_length", "log_every", "max_train_rows", "max_eval_rows",
            "student_depth")  # fmt: skip
SERVED_DEFAULT = "default"  # bare --student-of: the task's served default (the model store's served.json)
STUDENT_ONLY = ("student_layers", "student_depth", "hidden_loss_weight")


class TrainingError(RuntimeError):
    """A run that cannot go on (bad base model, bad arguments); the message is one line."""


def flag(help_text: str | None = None, *, default: Any = None, **argparse_kwargs: Any) -> dict[str, Any]:
    """A :class:`Config` field's flag: ``default`` is the command line's (``None``: resolved by :func:`parse_args`);
    ``argparse_kwargs`` go to ``add_argument`` as they are (``choices``, ``required``, ``action``), but for
    ``name``, the flag when it is not the field's name with dashes."""
    return {"help": help_text, "default": default, **argparse_kwargs}


@dataclass(frozen=True)
class Config:
    """A run's settings, resolved; written into metrics.json as ``hyperparameters``, key by key."""

    task: str = field(metadata=flag(f"one of: {', '.join(TASKS)}", required=True))
    base_model: str = field(
        metadata=flag(
            f"a short name ({', '.join(BASE_MODELS)}: verified offline weights), an HF hub id or a save_pretrained "
            "folder (default: $BASE_MODEL, else the task's default base model)"
        )
    )
    data_dir: Path = field(metadata=flag("raw data folder (default: $DATA_DIR or the repository's data/)"))
    output: Path = field(metadata=flag("run folder (default: artifacts/<task>/<UTC timestamp>)"))
    model_store: Path = field(metadata=flag("where the .mar goes (default: $MODEL_STORE or model_store/)"))
    version: str | None = field(metadata=flag("archive version (default: next major version of the task in the store)"))
    epochs: int = field(metadata=flag("default: the task's recipe (training/tasks.py)"))
    schedule_epochs: int = field(
        metadata=flag(
            "epochs the warm-up and linear decay span; training stops after --epochs (default: the task's recipe "
            "when --epochs is too, else --epochs)"
        )
    )
    batch_size: int = field(metadata=flag(default=32))
    lr: float = field(metadata=flag("peak learning rate (default: the task's recipe)"))
    weight_decay: float = field(metadata=flag(default=0.01))
    warmup_ratio: float = field(metadata=flag("share of steps with a linear warm-up (default: the task's)"))
    seed: int = field(metadata=flag(default=42))
    max_length: int = field(metadata=flag("tokens per text, in training and in serving", default=128))
    max_train_rows: int | None = field(metadata=flag("train on a seeded random subset (smoke runs)"))
    max_eval_rows: int | None = field(metadata=flag("evaluate on a seeded random subset (smoke runs)"))
    max_int8_drop: float = field(metadata=flag("refuse to package when int8 loses more of the metric", default=0.01))
    quantization: str = field(
        metadata=flag(
            "served int8 scheme; auto = the first of the candidates within --max-int8-drop (see docs/training.md)",
            choices=("auto", "per_channel", "per_tensor", "none"),
            default="auto",
        )
    )
    keep_fp32: tuple[str, ...] = field(
        metadata=flag("module-name prefixes left fp32 (with a fixed scheme)", default=())
    )
    engine: str = field(
        metadata=flag(
            "the handler's CPU engine to serve (and to check int8 with): onnxruntime (model.onnx built into the "
            "archive) or torch (quantized at load)",
            choices=ENGINES,
            default="onnxruntime",
        )
    )
    augment: str = field(
        metadata=flag(
            "extra training rows made from the training split (training/augment.py; default: the task's recipe)",
            choices=(NONE, *sorted({name for names in AUGMENTATIONS.values() for name in names})),
        )
    )
    group_by_length: bool = field(
        metadata=flag(
            "plain shuffled batches (more padding)", name="--no-group-by-length", action="store_false", default=True
        )
    )
    int8_study: bool = field(
        metadata=flag(
            "score every int8 setting (also the slower fallbacks and report-only ones), not just until one passes",
            default=False,
        )
    )
    int8_per_module: bool = field(
        metadata=flag(
            "after the first int8 setting within --max-int8-drop, try int8 for each module it keeps fp32, one at a "
            "time, and keep int8 every one that stays within the bound (always on for --student-of)",
            default=False,
        )
    )
    # a finished run folder: skip fine-tuning, re-check and package its best/
    from_run: Path | None = field(
        metadata=flag(
            "skip fine-tuning: check, calibrate and package the best/ model of a finished run folder (its metrics.json"
            " gives the epochs and the training settings), e.g. to serve it with the current int8 check"
        )
    )
    teacher_logits: Path | None = field(
        metadata=flag(
            "distil: train on a teacher's soft labels too, from a logits file written by python -m training.distill"
        )
    )
    distill_alpha: float = field(
        metadata=flag(
            "with --teacher-logits or --student-of: the soft-label loss's share (the rest is cross-entropy)",
            default=0.5,
        )
    )
    distill_temperature: float = field(
        metadata=flag(
            "with --teacher-logits or --student-of: the softmax temperature both logits are compared at", default=2.0
        )
    )
    # a student: k layers of a finished teacher, trained on its live soft labels (training/student.py)
    student_of: str | None = field(
        metadata=flag(
            "train a student of a finished teacher: <task>-<version> of the model store (its run's best/ weights) or a "
            "run's best/ folder; alone: the task's served default (served.json). The student starts from k of the "
            "teacher's layers with its tokenizer and labels and trains on its soft labels, augmented texts included",
            nargs="?",
            const=SERVED_DEFAULT,
            metavar="TEACHER",
        )
    )
    student_layers: tuple[int, ...] = field(
        metadata=flag(
            "with --student-of: the teacher's encoder layers (from 0) the student's layers are copied from, in order "
            "(default: an even spread of --student-depth)",
            default=(),
            type=int,
        )
    )
    student_depth: int | None = field(
        metadata=flag(
            "with --student-of: the student's layers k, copied from layers i x n // k of the teacher's n (default: "
            "half of them, about twice the teacher's speed; of 12: layers 0, 2, 4, 6, 8, 10; k = 8: 0, 1, 3, 4, 6, 7, "
            "9, 10)"
        )
    )
    hidden_loss_weight: float = field(
        metadata=flag(
            "with --student-of: the weight of an MSE between each student layer's output and the output of the "
            "teacher layer it was copied from (the teacher runs beside the student; 0: soft labels only)",
            default=0.0,
        )
    )
    log_every: int = field(metadata=flag("log a progress line every N steps", default=20))
    # "bf16" (autocast) or "fp32" once the run knows its device; "auto" until then
    precision: str = field(
        metadata=flag(
            "training arithmetic: bf16 autocast (fp32 master weights) where the hardware has bf16 math, else fp32",
            choices=("auto", "bf16", "fp32"),
            default="auto",
        )
    )


def _value_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``; ``tuple[str, ...]`` -> ``tuple``."""
    if isinstance(annotation, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) or annotation


def parser() -> argparse.ArgumentParser:
    """The training CLI's parser, built from :class:`Config`'s fields (``python -m training.train --help``)."""
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    hints = typing.get_type_hints(Config)
    for f in fields(Config):
        kwargs = dict(f.metadata)
        name = kwargs.pop("name", "--" + f.name.replace("_", "-"))
        kind = _value_type(hints[f.name])
        if kind is bool:
            kwargs.setdefault("action", "store_true")
        elif kind is tuple:
            kwargs |= {"nargs": "*", "default": list(kwargs["default"])}
        elif kind is not str:
            kwargs["type"] = kind
        if kwargs.get("required"):
            del kwargs["default"]
        p.add_argument(name, dest=f.name, **kwargs)
    return p


def parse_args(argv: list[str] | None) -> Config:
    """A command line -> a :class:`Config`; a bad value raises :class:`TrainingError` with one line."""
    a = parser().parse_args(argv)
    for name in POSITIVE:
        value = getattr(a, name)
        if value is not None and value < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be a positive integer, not {value}")
    if not 0 <= a.distill_alpha <= 1 or a.distill_temperature <= 0:
        raise TrainingError("--distill-alpha must be within [0, 1] and --distill-temperature positive")
    check_student(a)
    if a.version is not None and not VERSION_RE.match(a.version):
        raise TrainingError(f"--version {a.version!r} must look like 1, 1.0 or 1.0.2")
    try:
        task = get_task(a.task)
    except DataError as exc:
        raise TrainingError(str(exc)) from None
    base = a.base_model or os.environ.get("BASE_MODEL") or task.base_model
    # a student trains by its task's default recipe (the served default's, which it is a student of) until
    # measurement picks one of its own; its base, the teacher's layers, is known once the teacher is read (train.py)
    recipe = task.recipe(task.base_model if a.student_of is not None else base)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    resolved = {
        "data_dir": default_data_dir(),
        "output": REPO / "artifacts" / a.task / stamp,
        "model_store": default_model_store(),
        "epochs": recipe.epochs,
        "lr": recipe.lr,
        "warmup_ratio": recipe.warmup_ratio,
        "augment": NONE if a.teacher_logits else recipe.augment,  # a teacher's logits cover the data's own texts
    }
    if a.student_layers and a.student_depth is None:
        a.student_depth = len(a.student_layers)
    if a.schedule_epochs is None:
        from_recipe = a.epochs is None and recipe.schedule_epochs is not None
        a.schedule_epochs = recipe.schedule_epochs if from_recipe else (a.epochs or recipe.epochs)
    values = vars(a) | {name: default for name, default in resolved.items() if getattr(a, name) is None}
    if values["augment"] != NONE and values["augment"] not in AUGMENTATIONS.get(task.name, {}):
        raise TrainingError(f"--augment {values['augment']} does not apply to task {task.name} (use --augment none)")
    if values["augment"] != NONE and a.teacher_logits:
        raise TrainingError("--teacher-logits has logits for the training texts only: use --augment none with it")
    if values["schedule_epochs"] < values["epochs"]:
        raise TrainingError(
            f"--schedule-epochs ({values['schedule_epochs']}) must be at least --epochs ({values['epochs']})"
        )
    tuples = {"keep_fp32": tuple(a.keep_fp32), "student_layers": tuple(a.student_layers)}
    return Config(**(values | {"base_model": base} | tuples))


def check_student(a: argparse.Namespace) -> None:
    """The student flags go with --student-of, which brings its own base model and soft labels."""
    if a.student_of is None:
        given = [name for name in STUDENT_ONLY if getattr(a, name) not in (None, [], 0.0)]
        if given:
            raise TrainingError(f"--{given[0].replace('_', '-')} applies to a student: add --student-of")
        return
    clashing = [name for name in ("base_model", "teacher_logits", "from_run") if getattr(a, name) is not None]
    if clashing:
        raise TrainingError(
            f"--student-of starts from its teacher's layers and soft labels: drop --{clashing[0].replace('_', '-')}"
        )
    if a.hidden_loss_weight < 0:
        raise TrainingError(f"--hidden-loss-weight must be 0 or more, not {a.hidden_loss_weight}")
    if a.student_layers and a.student_depth is not None and a.student_depth != len(a.student_layers):
        raise TrainingError(
            f"--student-depth {a.student_depth} does not match the {len(a.student_layers)} --student-layers"
        )
