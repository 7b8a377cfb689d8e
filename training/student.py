"""Students: k of a finished teacher's encoder layers, trained on its soft labels into the next version of its model.

    python -m training.train --task cola --student-of cola-1.0    # make student TASK=cola [TEACHER=cola-1.0]

The teacher is a version of the model store (its archive serves ``model.onnx`` alone, so its ``metrics.json`` names
the run folder whose ``best/`` keeps the fp32 weights), a run's ``best/`` folder, or, with ``--student-of`` alone,
the task's served default (``served.json``). The student is the teacher's config with ``num_hidden_layers = k`` and
the teacher's own weights: the embeddings, the chosen encoder layers, everything outside the layer stack (MPNet's
relative-attention bias, the pooler, the classification head), the tokenizer and the labels. It starts close to
the teacher, where a fresh small base starts far from the task (docs/training.md measured MiniLM distilled at 0.333
MCC), and it needs nothing but the teacher's folder. train.py then trains it like any other run, on the teacher's
soft labels (training/distill.py), and checks, calibrates and packages it as the next version of the same model.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from torchserve_protocol.archives import archive_name, parse_archive
from torchserve_protocol.store import STATE_FILE, StateFileError, read_state
from training import distill
from training.arguments import SERVED_DEFAULT, Config, TrainingError

log = logging.getLogger("training")
# ``bert.encoder.layer.3.attention.self.query.weight``: a BERT-family encoder's layer stack (bert, mpnet, roberta...)
LAYER_KEY = re.compile(r"^(?P<stack>(?:.+\.)?encoder\.layer\.)(?P<index>\d+)(?P<rest>\..+)$")
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class Teacher:
    label: str  # how reports name it: ``cola-1.0`` for a version of the store, else its folder
    folder: Path  # its save_pretrained folder: fp32 weights, config (labels) and tokenizer
    facts: dict[str, Any]  # what its own run reported (distill.teacher_facts)


def served_default(task: str, store: Path) -> str:
    """``<task>-<default>``: the version the store's ``served.json`` serves by default."""
    try:
        state = read_state(store)
    except (StateFileError, OSError) as exc:
        raise TrainingError(f"--student-of alone reads {task}'s served default, but {exc}") from None
    if state is None or task not in state.models:
        where = store / STATE_FILE
        raise TrainingError(f"--student-of alone takes {task}'s served default, and {where} names none: pass "
                            f"--student-of {task}-<version> or a run's best/ folder")  # fmt: skip
    return f"{task}-{state.models[task].default}"


def weights_folder(folder: Path, *, of: str, instead: str) -> Path:
    """``folder`` (or its ``best/``, a run folder) when it holds a model's fp32 weights; else one line saying what
    to pass ``instead``."""
    found = folder / "best" if (folder / "best" / "config.json").is_file() else folder
    if not (found / "config.json").is_file() or not (found / WEIGHTS).is_file():
        raise TrainingError(f"teacher {of}: {found} holds no fp32 weights ({WEIGHTS} and config.json; the archive "
                            f"carries model.onnx only): pass {instead}")  # fmt: skip
    return found


def archive_metrics(archive: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(archive) as mar:
            metrics = json.loads(mar.read("metrics.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise TrainingError(f"teacher {archive.name}: no readable metrics.json in the archive ({exc})") from None
    if not isinstance(metrics, dict):
        raise TrainingError(f"teacher {archive.name}: its metrics.json is not a training report")
    return metrics


def find_teacher(spec: str, *, task: str, store: Path) -> Teacher:
    """``--student-of``'s value -> the teacher's weights folder; :class:`TrainingError` (one line) if there is none."""
    spec = served_default(task, store) if spec == SERVED_DEFAULT else spec
    if Path(spec).is_dir():
        folder = weights_folder(Path(spec), of=spec, instead="a run's best/ folder")
        return Teacher(label=str(folder), folder=folder, facts=distill.teacher_facts(folder))
    mar = Path(spec) if spec.endswith(".mar") else store / f"{spec}.mar"
    archive = parse_archive(mar)
    if archive is None or not mar.is_file():
        raise TrainingError(f"--student-of {spec}: no archive {mar} and no such folder (pass {task}-<version> of "
                            f"the model store or a run's best/ folder)")  # fmt: skip
    label = archive_name(archive.name, archive.version).removesuffix(".mar")
    if archive.name != task:
        raise TrainingError(f"--student-of {spec} is a {archive.name} model, not {task}")
    metrics = archive_metrics(mar)
    output = (metrics.get("hyperparameters") or {}).get("output")
    instead = "--student-of <its run>/best (the folder that holds its fp32 weights), or train the teacher again"
    if not output:
        raise TrainingError(f"teacher {label}: its metrics.json names no run folder: pass {instead}")
    folder = weights_folder(Path(output) / "best", of=label, instead=instead)
    kept = distill.teacher_facts(folder)
    if kept.get("created") not in (None, metrics.get("created")):  # the run folder was used again since
        raise TrainingError(f"teacher {label}: {folder} holds another model (trained {kept['created']}, the archive's "
                            f"{metrics.get('created')}): pass {instead}")  # fmt: skip
    return Teacher(label=label, folder=folder, facts=kept | {"archive": mar.name})


def spread(total: int, k: int) -> tuple[int, ...]:
    """k of ``total`` layers, evenly from the first: layer ``i * total // k`` (12 -> 6: 0, 2, 4, 6, 8, 10; 12 -> 8:
    0, 1, 3, 4, 6, 7, 9, 10), the scheme of DistilBERT's every-other-layer start generalised to any k."""
    if not 1 <= k <= total:
        raise TrainingError(f"--student-depth {k}: the teacher has {total} layers")
    return tuple(i * total // k for i in range(k))


def checked_layers(layers: Sequence[int], total: int) -> tuple[int, ...]:
    increasing = all(a < b for a, b in itertools.pairwise(layers))
    if not layers or not increasing or not 0 <= layers[0] <= layers[-1] < total:
        raise TrainingError(f"--student-layers {' '.join(map(str, layers))}: expected increasing layers of the "
                            f"teacher's 0..{total - 1}")  # fmt: skip
    return tuple(layers)


def student_state(teacher: Mapping[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """The student's weights: student layer ``j`` is teacher layer ``layers[j]``; every tensor outside the layer
    stack (embeddings, relative-attention bias, pooler, head) is the teacher's."""
    state: dict[str, torch.Tensor] = {}
    for key, value in teacher.items():
        match = LAYER_KEY.match(key)
        if match is None:
            state[key] = value
        elif int(match["index"]) in layers:
            state[f"{match['stack']}{layers.index(int(match['index']))}{match['rest']}"] = value
    if len(state) == len(teacher):
        raise TrainingError("the teacher has no encoder.layer.N weights: only BERT-family encoders can be cut")
    return state


def build(
    teacher: Teacher, out: Path, *, labels: Sequence[str], layers: Sequence[int] = (), depth: int | None = None
) -> tuple[tuple[int, ...], int]:
    """Write the student (``save_pretrained`` with the teacher's tokenizer) to ``out``; returns the teacher layers
    its layers were copied from (``layers``, else the :func:`spread` of ``depth``, else of half the teacher's layers)
    and how many the teacher has."""
    model = distill.load_teacher(teacher.folder)
    id2label = {int(i): str(name) for i, name in (model.config.id2label or {}).items()}
    named = [id2label[i] for i in sorted(id2label)]
    if named != list(labels):
        raise TrainingError(f"teacher {teacher.label} answers {', '.join(named)}, not this task's {', '.join(labels)}")
    total = model.config.num_hidden_layers
    chosen = checked_layers(layers, total) if layers else spread(total, depth or max(1, total // 2))
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(chosen)
    student: PreTrainedModel = AutoModelForSequenceClassification.from_config(config)
    student.load_state_dict(student_state(model.state_dict(), chosen), strict=True)  # every weight is the teacher's
    student.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher.folder).save_pretrained(out)
    log.info("student: layers %s of teacher %s's %d -> %s", ",".join(map(str, chosen)), teacher.label, total, out)
    return chosen, total


@dataclass(frozen=True)
class Start:
    """What a student run trains from and on."""

    folder: Path  # the student before training (save_pretrained): what fit() fine-tunes
    layers: tuple[int, ...]  # the teacher layer each student layer was copied from
    base: dict[str, str]  # the report's facts about the base model
    soft_labels: np.ndarray  # the teacher's logits for every training text, in order
    report: dict[str, Any]  # metrics.json's "teacher"
    live: distill.LiveTeacher | None  # with --hidden-loss-weight


def start(teacher: Teacher, cfg: Config, *, labels: Sequence[str], texts: list[str], device: torch.device) -> Start:
    """Cut the student out of the teacher into ``<output>/student-init`` and compute the teacher's soft labels."""
    folder = cfg.output / "student-init"
    layers, total = build(teacher, folder, labels=labels, layers=cfg.student_layers, depth=cfg.student_depth)
    logits = distill.teacher_logits(teacher.folder, texts, max_length=cfg.max_length)
    live = None
    if cfg.hidden_loss_weight > 0:  # the teacher's hidden states are per batch: it runs beside the student
        model = distill.load_teacher(teacher.folder).to(device)  # type: ignore[arg-type]
        live = distill.LiveTeacher(model, layers, cfg.hidden_loss_weight)
    base = {
        "name": f"{len(layers)} of the {total} layers of {teacher.label}",
        "teacher": teacher.label,
        "layers": ",".join(map(str, layers)),
        "teacher_base": str(teacher.facts.get("base_model")),
    }
    report = {
        "student_of": teacher.label,
        "layers": list(layers),
        "teacher_layers": total,
        "max_length": cfg.max_length,
        "teacher": teacher.facts,  # as a logits file's header has it (stack/results.py reads both alike)
    }
    return Start(folder=folder, layers=layers, base=base, soft_labels=logits, report=report, live=live)
