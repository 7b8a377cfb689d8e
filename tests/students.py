"""A tiny teacher really trained on a few CoLA rows, served by default, and its student really distilled from it
with ``--student-of`` alone, in one model store (``cola-1.0.mar`` and ``cola-2.0.mar``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.tiny_models import COLA_LABELS, make_tiny_classifier
from torchserve_protocol.store import ModelState, State, VersionState, write_state
from training.train import main as train

TEACHER_LAYERS = 4  # its student takes 2 of them: layers 0 and 2 (training.student.spread)
# fp32 arithmetic, so that the runs are the same on every CPU (bf16 where the CPU has it)
SMALL = ["--epochs", "1", "--batch-size", "8", "--max-train-rows", "40", "--max-eval-rows", "24", "--max-length", "64"]
SMALL += ["--precision", "fp32"]
WORKERS = 1  # per version: two versions of one worker each keep the integration tier's TorchServe light


@dataclass(frozen=True)
class Taught:
    store: Path  # cola-1.0.mar (the teacher, the served default) and cola-2.0.mar (its student, not registered)
    teacher_run: Path  # the teacher's run folder: its best/ holds the fp32 weights the student was cut from
    student_run: Path
    data_dir: Path


def teach_and_distil(root: Path, data_dir: Path) -> Taught:
    store, teacher_run, student_run = root / "store", root / "teacher", root / "student"
    base = make_tiny_classifier(root / "base", COLA_LABELS, seed=1, layers=TEACHER_LAYERS)
    common = ["--task", "cola", "--data-dir", str(data_dir), "--model-store", str(store), *SMALL]
    assert train([*common, "--base-model", str(base), "--output", str(teacher_run)]) == 0
    served = ModelState(default="1.0", versions={"1.0": VersionState(WORKERS)})
    write_state(store, State(models={"cola": served}))  # what the first start writes: the teacher is served
    # --student-of alone: the served default's student, with the teacher's hidden states too (its live path)
    assert train([*common, "--output", str(student_run), "--student-of", "--hidden-loss-weight", "1"]) == 0
    return Taught(store=store, teacher_run=teacher_run, student_run=student_run, data_dir=data_dir)
