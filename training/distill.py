"""Soft labels: a fine-tuned teacher's logits on the training texts, written once, read by a student's training run.

    python -m training.distill --task cola --teacher artifacts/cola/<run>/best --output data/teachers/cola.json

A large teacher (MPNet) can take longer to train than a first ``make serve`` may spend; its logits are small. The
file holds one logit vector per training text, keyed by the sha256 of the text (no text is copied), with the
teacher's facts (its run's metrics, base weights, the data files' hashes) so a student run can refuse logits that
belong to other data. ``training.train --teacher-logits FILE`` trains on ``alpha`` x the soft-label loss (KL at
``temperature``, scaled by its square) + ``1 - alpha`` x the usual cross-entropy.

A student of a finished teacher (``--student-of``, training/student.py) computes the same logits here at the start of
its run, for every training text (augmented ones too), and may also learn the teacher's hidden states
(:func:`hidden_state_loss`, with the teacher running beside it: :class:`LiveTeacher`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BatchEncoding, PreTrainedModel

from training.arguments import TrainingError
from training.batches import by_length
from training.tasks import DataError, Splits, default_data_dir, get_task, sha256

log = logging.getLogger("training")
FORMAT = 1


def text_key(text: str) -> str:
    """A training text's key in the logits file (the first 16 hex digits of its sha256: no text is stored)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *, alpha: float, temperature: float
) -> torch.Tensor:
    """``alpha`` x T^2 x KL(teacher_T || student_T) + (1 - alpha) x cross-entropy on the labels (Hinton et al.);
    T^2 keeps the soft term's gradients on the scale of the hard one's."""
    student = student.float()
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher.float() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student, labels)


def hidden_state_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], layers: Sequence[int], mask: torch.Tensor
) -> torch.Tensor:
    """The mean over the student's layers j of the MSE between its layer j's output (``hidden_states[j + 1]``) and
    the output of the teacher layer it was copied from (``hidden_states[layers[j] + 1]``), over real tokens only:
    padding, whose states mean nothing, is masked out."""
    keep = mask.unsqueeze(-1).float()
    values = keep.sum() * student[0].shape[-1]
    losses = [
        ((s.float() - teacher[t + 1].float()) ** 2 * keep).sum() / values
        for s, t in zip(student[1:], layers, strict=True)
    ]
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class LiveTeacher:
    """The teacher beside a student in training, for the hidden-state loss (``--hidden-loss-weight``)."""

    model: PreTrainedModel  # in eval mode, never trained
    layers: tuple[int, ...]  # the teacher layer each student layer was copied from
    weight: float

    def loss(self, student_hidden: Sequence[torch.Tensor], enc: BatchEncoding) -> torch.Tensor:
        with torch.no_grad():
            teacher_hidden = self.model(**enc, output_hidden_states=True).hidden_states
        return self.weight * hidden_state_loss(student_hidden, teacher_hidden, self.layers, enc["attention_mask"])


def load_teacher(folder: Path) -> PreTrainedModel:
    """A fine-tuned teacher's fp32 model, in eval mode (safetensors only: nothing is unpickled)."""
    model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    return model.eval()


def teacher_facts(teacher: Path) -> dict[str, Any]:
    """What the teacher's own run reported (metrics.json beside its weights, as training leaves it in best/)."""
    try:
        run = json.loads((teacher / "metrics.json").read_text())
    except (OSError, ValueError):
        return {"folder": str(teacher)}
    return {
        "folder": str(teacher),
        "created": run.get("created"),
        "command": run.get("command"),
        "base_model": run.get("base_model"),
        "base_weights_sha256": (run.get("base") or {}).get("weights_sha256"),
        "best_epoch": run.get("best_epoch"),
        "best_validation": run.get("best_validation"),
        "test": run.get("test"),
    }


@torch.inference_mode()
def teacher_logits(teacher: Path, texts: list[str], *, max_length: int, batch_size: int = 64) -> np.ndarray:
    """The teacher's fp32 logits for ``texts``, in their order (batches of similar-length texts)."""
    model = load_teacher(teacher)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    out = np.zeros((len(texts), int(model.config.num_labels or 0)), dtype=np.float32)
    batches = by_length(texts, batch_size)
    for step, idx in enumerate(batches, start=1):
        enc = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        out[idx] = model(**enc).logits.float().numpy()
        if step % 20 == 0 or step == len(batches):
            log.info("teacher logits: batch %d/%d", step, len(batches))
    return out


def write(
    path: Path, *, task: str, splits: Splits, logits: np.ndarray, teacher: dict[str, Any], max_length: int
) -> None:
    """The logits file (JSON, one line per text), renamed into place whole."""
    keyed = {text_key(t): [round(float(v), 5) for v in row] for t, row in zip(splits.train.texts, logits, strict=True)}
    header = {
        "format": FORMAT,
        "task": task,
        "data_sha256": splits.sources,
        "train_rows": len(splits.train),
        "max_length": max_length,
        "teacher": teacher,
    }
    lines = [json.dumps(header), *(json.dumps({"key": k, "logits": v}) for k, v in keyed.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def by_name(sources: object) -> dict[str, str] | None:
    """Data files by name -> sha256: a logits file made in one clone (absolute paths) serves any other."""
    return {Path(k).name: v for k, v in sources.items()} if isinstance(sources, dict) else None


def read(path: Path, *, task: str, splits: Splits) -> tuple[np.ndarray, dict[str, Any]]:
    """The logits for ``splits.train``, in its order, and the file's header; a file made for another task or other
    data, or one that lacks a training text, raises :class:`TrainingError` with one line."""
    try:
        header, *rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
        keyed = {row["key"]: row["logits"] for row in rows}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"--teacher-logits {path}: not a readable logits file ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("task") != task:
        raise TrainingError(f"--teacher-logits {path} is not a {task} logits file of format {FORMAT}")
    if by_name(header.get("data_sha256")) != by_name(splits.sources):
        raise TrainingError(
            f"--teacher-logits {path} was made from other data files than this run's ({', '.join(splits.sources)})"
        )
    try:
        logits = np.array([keyed[text_key(t)] for t in splits.train.texts], dtype=np.float32)
    except KeyError:
        raise TrainingError(f"--teacher-logits {path} lacks some of this run's training texts") from None
    return logits, header


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    p = argparse.ArgumentParser(prog="python -m training.distill", description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, help="the task whose training split the logits are for")
    p.add_argument("--teacher", type=Path, required=True, help="a fine-tuned save_pretrained folder (a run's best/)")
    p.add_argument("--output", type=Path, required=True, help="the logits file to write (JSON lines)")
    p.add_argument("--data-dir", type=Path, default=None, help="raw data folder (default: $DATA_DIR or data/)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text, as in training")
    a = p.parse_args(argv)
    try:
        task = get_task(a.task)
        if not (a.teacher / "config.json").is_file():
            raise TrainingError(f"--teacher {a.teacher} is not a save_pretrained folder (no config.json)")
        splits = task.load(a.data_dir or default_data_dir())
        logits = teacher_logits(a.teacher, splits.train.texts, max_length=a.max_length)
        agree = float(np.mean(logits.argmax(axis=1) == np.array(splits.train.labels)))
        facts = teacher_facts(a.teacher) | {"train_accuracy": round(agree, 4)}
        write(a.output, task=task.name, splits=splits, logits=logits, teacher=facts, max_length=a.max_length)
    except (TrainingError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("wrote %s (%d texts; teacher agrees with %.1f%% of the labels; sha256 %s)",
             a.output, len(logits), 100 * agree, sha256(a.output))  # fmt: skip
    print(a.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
