"""Fine-tune a sequence classifier for one task, evaluate every epoch, keep the best, check int8, package a .mar.

    python -m training.train --task cola          # defaults: offline MiniLM base, data/, 3 epochs

Top to bottom: load data -> build model -> train (evaluate every epoch, keep the best on disk) -> evaluate the best
model exactly as the handler serves it (fp32 and int8) -> report (metrics.json, plots, model card) -> package the
next version into the model store, unless int8 loses more than ``--max-int8-drop`` of the task's metric.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
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
from transformers.utils import logging as hf_logging

from handlers.text_classification import ENGINES
from torchserve_protocol.archives import VERSION_RE, archive_name
from torchserve_protocol.layout import REPO
from training import int8_check, onnx_build, report
from training.base_models import BASE_MODELS, BaseModelError, resolve
from training.package import PackagingError, ServingConfig, next_version, package
from training.tasks import TASKS, DataError, Examples, Splits, Task, compute_metrics, default_data_dir, get_task

log = logging.getLogger("training")


class TrainingError(RuntimeError):
    """A run that cannot go on (bad base model, bad arguments); the message is one line."""


class Int8DropTooLarge(TrainingError):
    """The int8 model the handler would serve loses more than the allowed share of the task's metric."""


@dataclass(frozen=True)
class Config:
    task: str
    base_model: str
    data_dir: Path
    output: Path
    model_store: Path
    version: str | None
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    seed: int
    max_length: int
    max_train_rows: int | None
    max_eval_rows: int | None
    max_int8_drop: float
    quantization: str
    keep_fp32: tuple[str, ...]
    engine: str
    group_by_length: bool
    int8_study: bool
    from_run: Path | None  # a finished run folder: skip fine-tuning, re-check and package its best/
    log_every: int
    precision: str  # "bf16" (autocast) or "fp32", resolved from --precision


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off only where the hardware has bf16 math (measured 2x per step on an AVX512-BF16 CPU)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(choice: str, device: torch.device) -> str:
    if choice == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return choice


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    p.add_argument(
        "--base-model",
        help=f"a short name ({', '.join(BASE_MODELS)}: verified offline weights), an HF hub id or a save_pretrained "
        "folder (default: $BASE_MODEL, else the task's default base model)",
    )
    p.add_argument("--data-dir", type=Path, help="raw data folder (default: $DATA_DIR or the repository's data/)")
    p.add_argument("--output", type=Path, help="run folder (default: artifacts/<task>/<UTC timestamp>)")
    p.add_argument("--model-store", type=Path, help="where the .mar goes (default: $MODEL_STORE or model_store/)")
    p.add_argument("--version", help="archive version (default: next major version of the task in the store)")
    p.add_argument("--epochs", type=int, help="default: the task's recipe (training/tasks.py)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, help="peak learning rate (default: the task's recipe)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, help="share of steps with a linear warm-up (default: the task's)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text, in training and in serving")
    p.add_argument("--max-train-rows", type=int, help="train on a seeded random subset (smoke runs)")
    p.add_argument("--max-eval-rows", type=int, help="evaluate on a seeded random subset (smoke runs)")
    p.add_argument(
        "--max-int8-drop", type=float, default=0.01, help="refuse to package when int8 loses more of the metric"
    )
    p.add_argument(
        "--quantization",
        choices=("auto", "per_channel", "per_tensor", "none"),
        default="auto",
        help="served int8 scheme; auto = the first of the candidates within --max-int8-drop (see docs/training.md)",
    )
    p.add_argument("--keep-fp32", nargs="*", default=[], help="module-name prefixes left fp32 (with a fixed scheme)")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default="onnxruntime",
        help="the handler's CPU engine to serve (and to check int8 with): onnxruntime (model.onnx built into the "
        "archive) or torch (quantized at load)",
    )
    p.add_argument(
        "--int8-study",
        action="store_true",
        help="score every int8 setting (also the slower fallbacks and report-only ones), not just until one passes",
    )
    p.add_argument(
        "--from-run",
        type=Path,
        help="skip fine-tuning: check, calibrate and package the best/ model of a finished run folder (its metrics.json"
        " gives the epochs and the training settings), e.g. to serve it with the current int8 check",
    )
    p.add_argument("--no-group-by-length", action="store_true", help="plain shuffled batches (more padding)")
    p.add_argument("--log-every", type=int, default=20, help="log a progress line every N steps")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="training arithmetic: bf16 autocast (fp32 master weights) where the hardware has bf16 math, else fp32",
    )
    a = p.parse_args(argv)
    for name in ("epochs", "batch_size", "max_length", "log_every", "max_train_rows", "max_eval_rows"):
        value = getattr(a, name)
        if value is not None and value < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be a positive integer, not {value}")
    if a.version is not None and not VERSION_RE.match(a.version):
        raise TrainingError(f"--version {a.version!r} must look like 1, 1.0 or 1.0.2")
    try:
        task = get_task(a.task)
    except DataError as exc:
        raise TrainingError(str(exc)) from None
    base = a.base_model or os.environ.get("BASE_MODEL") or task.base_model
    recipe = task.recipe(base)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Config(
        task=a.task,
        base_model=base,
        data_dir=a.data_dir or default_data_dir(),
        output=a.output or REPO / "artifacts" / a.task / stamp,
        model_store=a.model_store or Path(os.environ.get("MODEL_STORE", REPO / "model_store")),
        version=a.version,
        epochs=recipe.epochs if a.epochs is None else a.epochs,
        batch_size=a.batch_size,
        lr=recipe.lr if a.lr is None else a.lr,
        weight_decay=a.weight_decay,
        warmup_ratio=recipe.warmup_ratio if a.warmup_ratio is None else a.warmup_ratio,
        seed=a.seed,
        max_length=a.max_length,
        max_train_rows=a.max_train_rows,
        max_eval_rows=a.max_eval_rows,
        max_int8_drop=a.max_int8_drop,
        quantization=a.quantization,
        keep_fp32=tuple(a.keep_fp32),
        engine=a.engine,
        group_by_length=not a.no_group_by_length,
        int8_study=a.int8_study,
        from_run=a.from_run,
        log_every=a.log_every,
        precision=a.precision,
    )


# --- data and model ---------------------------------------------------------------------------------------------


def load_data(task: Task, cfg: Config) -> Splits:
    if not cfg.data_dir.is_dir():
        raise DataError(f"data directory {cfg.data_dir} does not exist (set --data-dir or DATA_DIR)")
    splits = task.load(cfg.data_dir)
    splits.train = splits.train.subset(cfg.max_train_rows, seed=cfg.seed)
    splits.validation = splits.validation.subset(cfg.max_eval_rows, seed=cfg.seed)
    if splits.test is not None:
        splits.test = splits.test.subset(cfg.max_eval_rows, seed=cfg.seed)
    return splits


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


def make_batches(lengths: list[int], batch_size: int, *, rng: np.random.Generator, group: bool) -> list[list[int]]:
    """Shuffled batches; with ``group``, texts of similar length share a batch (less padding, as HF's
    ``group_by_length``): shuffle, sort within windows of 50 batches, then shuffle the batch order."""
    order = rng.permutation(len(lengths)).tolist()
    if group:
        window = batch_size * 50
        order = [
            i for s in range(0, len(order), window) for i in sorted(order[s : s + window], key=lengths.__getitem__)
        ]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def by_length(texts: list[str], size: int) -> list[list[int]]:
    """Evaluation batches of similar-length texts (order is restored by the caller)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[s : s + size] for s in range(0, len(order), size)]


# --- train and evaluate -----------------------------------------------------------------------------------------


@torch.inference_mode()
def evaluate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ex: Examples, *, cfg: Config, device: torch.device
) -> np.ndarray:
    """Predicted label ids, in the order of ``ex``."""
    model.eval()
    preds = np.zeros(len(ex), dtype=np.int64)
    for idx in by_length(ex.texts, cfg.batch_size * 2):
        enc = tokenizer(
            [ex.texts[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"
        ).to(device)
        preds[idx] = model(**enc).logits.argmax(dim=-1).cpu().numpy()
    return preds


def optimizer_for(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW with weight decay on weights only (not biases or LayerNorm), as the HF Trainer does."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
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
) -> float:
    """One pass over ``batches``; returns the mean training loss. Logs a progress line every ``log_every`` steps."""
    model.train()
    total, start = 0.0, time.perf_counter()
    for step, idx in enumerate(batches, start=1):
        enc = tokenizer(
            [train.texts[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"
        ).to(device)
        labels = torch.tensor([train.labels[i] for i in idx], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss = model(**enc, labels=labels).loss
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


def fit(task: Task, splits: Splits, cfg: Config, device: torch.device, best_dir: Path, *, base: str) -> dict[str, Any]:
    """Train for ``cfg.epochs``, evaluating after each; the best epoch's model is saved to ``best_dir``."""
    set_seed(cfg.seed)
    model, tokenizer = build_model(base, task.labels, safetensors_only=cfg.base_model in BASE_MODELS)
    model = model.to(device)  # type: ignore[arg-type]
    lengths = [
        len(ids) for ids in tokenizer(splits.train.texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    ]
    steps_per_epoch = math.ceil(len(splits.train) / cfg.batch_size)
    optimizer = optimizer_for(model, cfg)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for epoch in range(1, cfg.epochs + 1):
        rng = np.random.default_rng(cfg.seed + epoch)
        batches = make_batches(lengths, cfg.batch_size, rng=rng, group=cfg.group_by_length)
        t0 = time.perf_counter()
        loss = train_epoch(
            model, tokenizer, splits.train, batches,
            optimizer=optimizer, scheduler=scheduler, cfg=cfg, device=device, epoch=epoch,
        )  # fmt: skip
        t1 = time.perf_counter()
        preds = evaluate(model, tokenizer, splits.validation, cfg=cfg, device=device)
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": loss,
            "validation": compute_metrics(splits.validation.labels, preds.tolist()),
            "confusion_matrix": report.confusion(splits.validation.labels, preds.tolist(), len(task.labels)),
            "train_s": round(t1 - t0, 2),
            "eval_s": round(time.perf_counter() - t1, 2),
        }
        history.append(row)
        score = row["validation"][task.metric]
        log.info("epoch %d/%d validation %s (train %.0f s)", epoch, cfg.epochs, report.fmt(row["validation"]), t1 - t0)
        if best is None or score > best["validation"][task.metric]:
            best = row
            shutil.rmtree(best_dir, ignore_errors=True)
            model.save_pretrained(best_dir)
            tokenizer.save_pretrained(best_dir)
    assert best is not None
    return {"epochs": history, "best_epoch": best["epoch"], "best_validation": best["validation"]}


# --- the run ------------------------------------------------------------------------------------------------------


def run(cfg: Config, argv: list[str]) -> Path:
    """The whole pipeline; returns the archive path or raises (nothing is written to the store on failure)."""
    started = time.perf_counter()
    task = get_task(cfg.task)
    version = cfg.version or next_version(cfg.model_store, task.name)
    if (cfg.model_store / archive_name(task.name, version)).exists():
        raise PackagingError(
            f"{cfg.model_store / archive_name(task.name, version)} already exists: pick another --version"
        )
    splits = load_data(task, cfg)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prior = finished_run(cfg.from_run, task) if cfg.from_run else None
    if prior is not None:  # the settings the model was trained with, for the report and the card
        trained = prior["hyperparameters"]
        cfg = replace(cfg, **{k: trained[k] for k in ("base_model", "epochs", "lr", "warmup_ratio", "precision")})
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))
    base, base_facts = resolve(cfg.base_model)
    log.info(
        "task %s: %d train / %d validation / %s test rows; base %s; device %s (%d threads, %s); output %s",
        *(task.name, len(splits.train), len(splits.validation), len(splits.test) if splits.test else 0),
        *(cfg.base_model, device, threads, cfg.precision, cfg.output),
    )
    if minutes := task.recipe(cfg.base_model).minutes:
        log.info("expected: ~%.0f minutes for this task's recipe on %s on a 2-core CPU", minutes, cfg.base_model)
    cfg.output.mkdir(parents=True, exist_ok=True)
    best_dir = cfg.output / "best"
    t0 = time.perf_counter()
    if prior is None or cfg.from_run is None:
        result = fit(task, splits, cfg, device, best_dir, base=base)
    else:
        shutil.copytree(cfg.from_run / "best", best_dir)
        result = {k: prior[k] for k in ("epochs", "best_epoch", "best_validation")}
        result["trained_by"] = {"run": str(cfg.from_run), "command": prior["command"]}
    t1 = time.perf_counter()
    if splits.test is not None:
        model = AutoModelForSequenceClassification.from_pretrained(best_dir).to(device)
        tokenizer = AutoTokenizer.from_pretrained(best_dir)
        result["test"] = compute_metrics(
            splits.test.labels, evaluate(model, tokenizer, splits.test, cfg=cfg, device=device).tolist()
        )
    write_calibration_texts(splits.train, best_dir, seed=cfg.seed)
    check_cfg = int8_check.CheckConfig(
        metric_drop=cfg.max_int8_drop,
        engine=cfg.engine,
        quantization=cfg.quantization,
        keep_fp32=cfg.keep_fp32,
        max_length=cfg.max_length,
        threads=threads,
        study=cfg.int8_study,
    )
    quant = int8_check.check(task, splits, check_cfg, best_dir, cfg.output)
    t2 = time.perf_counter()
    metrics: dict[str, Any] = {
        "task": task.name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m training.train " + shlex.join(argv),
        "base_model": cfg.base_model,
        "base": base_facts,
        "device": str(device),
        "threads": threads,
        "labels": list(task.labels),
        "metric": task.metric,
        "data": {"dir": str(cfg.data_dir), "sha256": splits.sources},
        "rows": {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test or [])},
        "hyperparameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        **result,
        "quantization": quant,
        "timing_s": {"train_and_eval": round(t1 - t0, 1), "quantization_check": round(t2 - t1, 1)},
    }
    report.write_plots(metrics, cfg.output)
    chosen = quant["chosen"]
    if chosen is None:
        best = min((c for c in quant["candidates"] if c["eligible"]), key=lambda c: c["drop"])
        metrics["packaging"] = {"refused": True}
        report.write_json(metrics, cfg.output / "metrics.json")
        raise Int8DropTooLarge(
            f"int8 loses {best['drop']:.4f} {task.metric} against fp32 ({quant['fp32']['validation'][task.metric]:.4f})"
            f" even with the best setting tried, more than --max-int8-drop {cfg.max_int8_drop}: not packaged "
            f"(report in {cfg.output}; try --quantization none or another base model)"
        )
    metrics["packaging"] = {
        "refused": False,
        "archive": archive_name(task.name, version),
        "handler": _handler_section(quant, cfg),
    }
    metrics["timing_s"]["total"] = round(time.perf_counter() - started, 1)
    card = report.model_card(metrics)
    for folder in (cfg.output, best_dir):
        report.write_json(metrics, folder / "metrics.json")
        (folder / "MODEL_CARD.md").write_text(card)
    serving = ServingConfig(handler=_handler_section(quant, cfg))
    archive = package(best_dir, name=task.name, store=cfg.model_store, version=version, serving=serving)
    report.write_atomic(cfg.model_store / f"{task.name}-{version}.md", card)
    log.info("packaged %s (%.0f s in all)", archive, time.perf_counter() - started)
    return archive


def finished_run(folder: Path, task: Task) -> dict[str, Any]:
    """A finished run's metrics.json, checked to be this task's and to have its best/ model."""
    try:
        prior = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"--from-run {folder}: no readable metrics.json ({exc})") from None
    if prior.get("task") != task.name or not (folder / "best" / "config.json").is_file():
        raise TrainingError(f"--from-run {folder} is not a finished {task.name} run (metrics.json + best/)")
    return dict(prior)


def _handler_section(quant: dict[str, Any], cfg: Config) -> dict[str, Any]:
    temperature = quant.get("calibration", {}).get("temperature", 1.0)
    return {"max_length": cfg.max_length, "num_threads": 1, **quant["chosen"]["served"], "temperature": temperature}


CALIBRATION_ROWS = 256  # training texts that static int8 activation ranges are calibrated on


def write_calibration_texts(train: Examples, best_dir: Path, *, seed: int) -> None:
    """A seeded sample of training texts beside the weights (``calibration.json``): packaging calibrates static
    int8 on them, here and whenever the same model is re-packaged."""
    sample = train.subset(CALIBRATION_ROWS, seed=seed).texts
    (best_dir / onnx_build.CALIBRATION_FILE).write_text(json.dumps(sample))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    hf_logging.disable_progress_bar()  # per-file bars on every load; our own progress lines are enough
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(argv)
        archive = run(cfg, argv)
    except Int8DropTooLarge as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (TrainingError, DataError, PackagingError, BaseModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(archive)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
