"""Fine-tuning: build the model, train for the configured epochs, evaluate after each, keep the best on disk."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
    set_seed,
)

from training.arguments import Config, TrainingError
from training.base_models import BASE_MODELS
from training.batches import by_length, make_batches
from training.distill import LiveTeacher, distillation_loss
from training.tasks import Examples, Splits, Task, compute_metrics, fmt

log = logging.getLogger("training")


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    validation: dict[str, float]  # every metric of tasks.compute_metrics
    confusion_matrix: list[list[int]]  # rows: true label, columns: predicted label
    train_s: float
    eval_s: float


@dataclass(frozen=True)
class FitResult:
    epochs: list[EpochResult]
    best_epoch: int

    @property
    def best(self) -> EpochResult:
        return next(row for row in self.epochs if row.epoch == self.best_epoch)


def confusion(y_true: list[int], y_pred: list[int], n_labels: int) -> list[list[int]]:
    """Rows: true label, columns: predicted label."""
    from sklearn.metrics import confusion_matrix

    return [[int(v) for v in row] for row in confusion_matrix(y_true, y_pred, labels=list(range(n_labels)))]


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off only where the hardware has bf16 math (measured 2x per step on an AVX512-BF16 CPU)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(choice: str, device: torch.device) -> str:
    if choice == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return choice


def build_model(
    base: str, labels: tuple[str, ...], *, safetensors_only: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Base encoder + a fresh classification head; ``id2label``/``label2id`` go into the config."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            use_safetensors=True if safetensors_only else None,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"cannot load base model {base!r} (expected an HF hub id or a save_pretrained folder with config.json, "
            f"weights and tokenizer): {reason}"
        ) from exc
    return model, tokenizer


@torch.inference_mode()
def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ex: Examples,
    *,
    batch_size: int,
    max_length: int,
    device: torch.device,
) -> np.ndarray:
    """Predicted label ids, in the order of ``ex``, in batches of ``batch_size`` similar-length texts."""
    model.eval()
    preds = np.zeros(len(ex), dtype=np.int64)
    for idx in by_length(ex.texts, batch_size):
        enc = tokenizer(
            [ex.texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        preds[idx] = model(**enc).logits.argmax(dim=-1).cpu().numpy()
    return preds


def optimizer_for(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW with weight decay on weights only (not biases or LayerNorm), as the HF Trainer does."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "norm" in name.lower() else decay).append(param)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def train_epoch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Examples,
    batches: list[list[int]],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: Config,
    device: torch.device,
    epoch: int,
    soft_labels: np.ndarray | None = None,
    live: LiveTeacher | None = None,
) -> float:
    """One pass over ``batches``; returns the mean training loss. Logs a progress line every ``log_every`` steps.
    With ``soft_labels`` (a teacher's logits per training text) the loss is :func:`distillation_loss`, plus with
    ``live`` (the teacher itself) its hidden-state loss."""
    model.train()
    total, start = 0.0, time.perf_counter()
    for step, idx in enumerate(batches, start=1):
        enc = tokenizer(
            [train.texts[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"
        ).to(device)
        labels = torch.tensor([train.labels[i] for i in idx], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            if soft_labels is None:
                loss = model(**enc, labels=labels).loss
            else:
                out = model(**enc, output_hidden_states=live is not None)
                loss = distillation_loss(
                    out.logits,
                    torch.from_numpy(soft_labels[idx]).to(device),
                    labels,
                    alpha=cfg.distill_alpha,
                    temperature=cfg.distill_temperature,
                )
                if live is not None:
                    loss = loss + live.loss(out.hidden_states, enc)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss.item()
        if step % cfg.log_every == 0 or step == len(batches):
            elapsed = time.perf_counter() - start
            eta = elapsed / step * (len(batches) - step)
            log.info(
                "epoch %d/%d step %d/%d loss %.4f (%.2f s/step, epoch ETA %.0f s)",
                *(epoch, cfg.epochs, step, len(batches), total / step, elapsed / step, eta),
            )
    return total / max(1, len(batches))


def fit(
    task: Task,
    splits: Splits,
    cfg: Config,
    device: torch.device,
    best_dir: Path,
    *,
    base: str,
    soft_labels: np.ndarray | None = None,
    live: LiveTeacher | None = None,
) -> FitResult:
    """Train for ``cfg.epochs``, evaluating after each; the best epoch's model is saved to ``best_dir``.
    ``soft_labels``: a teacher's logits per training text (``training.distill``); ``live``: the teacher itself,
    for a student's hidden-state loss."""
    set_seed(cfg.seed)
    model, tokenizer = build_model(base, task.labels, safetensors_only=cfg.base_model in BASE_MODELS)
    model = model.to(device)  # type: ignore[arg-type]
    lengths = [
        len(ids) for ids in tokenizer(splits.train.texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    ]
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    optimizer = optimizer_for(model, cfg)
    total_steps = steps_per_epoch * cfg.schedule_epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    history: list[EpochResult] = []
    best: EpochResult | None = None
    for epoch in range(1, cfg.epochs + 1):
        rng = np.random.default_rng(cfg.seed + epoch)
        batches = make_batches(lengths, cfg.batch_size, rng=rng, group=cfg.group_by_length)
        t0 = time.perf_counter()
        loss = train_epoch(
            model, tokenizer, splits.train, batches,
            optimizer=optimizer, scheduler=scheduler, cfg=cfg, device=device, epoch=epoch, soft_labels=soft_labels,
            live=live,
        )  # fmt: skip
        t1 = time.perf_counter()
        preds = evaluate(
            model, tokenizer, splits.validation, batch_size=cfg.batch_size * 2, max_length=cfg.max_length, device=device
        ).tolist()
        row = EpochResult(
            epoch=epoch,
            train_loss=loss,
            validation=compute_metrics(splits.validation.labels, preds),
            confusion_matrix=confusion(splits.validation.labels, preds, len(task.labels)),
            train_s=round(t1 - t0, 2),
            eval_s=round(time.perf_counter() - t1, 2),
        )
        history.append(row)
        log.info("epoch %d/%d validation %s (train %.0f s)", epoch, cfg.epochs, fmt(row.validation), t1 - t0)
        if best is None or row.validation[task.metric] > best.validation[task.metric]:
            best = row
            shutil.rmtree(best_dir, ignore_errors=True)
            model.save_pretrained(best_dir)
            tokenizer.save_pretrained(best_dir)
    assert best is not None
    return FitResult(epochs=history, best_epoch=best.epoch)
