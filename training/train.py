"""Fine-tune a sequence classifier for one task, evaluate every epoch, keep the best, check int8, package a .mar.

    python -m training.train --task cola          # defaults: offline MiniLM base, data/, 3 epochs

Top to bottom: load data -> build model -> train (evaluate every epoch, keep the best on disk) -> evaluate the best
model exactly as the handler serves it (fp32 and int8) -> report (metrics.json, plots, model card) -> package the
next version into the model store, unless int8 loses more than ``--max-int8-drop`` of the task's metric.

This module orchestrates; the jobs live beside it: ``arguments`` (the command line), ``fit`` (fine-tuning),
``int8_check`` (what the handler serves), ``run_report`` and ``report`` (metrics.json, plots, model card); a
student (``--student-of``) starts from ``student`` and learns from ``distill``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from torchserve_protocol.archives import archive_name
from training import distill, int8_check, onnx_build, report, student
from training.arguments import PROG, Config, TrainingError, parse_args
from training.augment import augmented
from training.base_models import BaseModelError, resolve
from training.fit import evaluate, fit, resolve_precision
from training.package import PackagingError, ServingConfig, next_version, package
from training.run_report import Packaging, RunReport, Timing, read_finished_run
from training.tasks import DataError, EvaluatedRows, Examples, Splits, Task, compute_metrics, get_task

log = logging.getLogger("training")
CALIBRATION_ROWS = 256  # training texts that static int8 activation ranges are calibrated on


class Int8DropTooLarge(TrainingError):
    """The int8 model the handler would serve loses more than the allowed share of the task's metric."""


def load_data(task: Task, cfg: Config) -> Splits:
    if not cfg.data_dir.is_dir():
        raise DataError(f"data directory {cfg.data_dir} does not exist (set --data-dir or DATA_DIR)")
    splits = task.load(cfg.data_dir)
    train = splits.train.subset(cfg.max_train_rows, seed=cfg.seed)
    held = [*splits.validation.texts, *(splits.test.texts if splits.test else [])]
    splits.train, splits.augmented = augmented(task.name, cfg.augment, train, held=held)
    splits.validation = splits.validation.subset(cfg.max_eval_rows, seed=cfg.seed)
    if splits.test is not None:
        splits.test = splits.test.subset(cfg.max_eval_rows, seed=cfg.seed)
    return splits


def write_calibration_texts(train: Examples, best_dir: Path, *, seed: int) -> None:
    """A seeded sample of training texts beside the weights (``calibration.json``): packaging calibrates static
    int8 on them, here and whenever the same model is re-packaged."""
    sample = train.subset(CALIBRATION_ROWS, seed=seed).texts
    (best_dir / onnx_build.CALIBRATION_FILE).write_text(json.dumps(sample))


def handler_section(check: int8_check.Int8Check, cfg: Config) -> dict[str, Any]:
    """The archive's ``model-config.yaml`` ``handler:`` section for the chosen setting."""
    assert check.chosen is not None
    served = check.chosen.served.as_dict()
    return {"max_length": cfg.max_length, "num_threads": 1, **served, "temperature": check.temperature}


def best_on_test(splits: Splits, cfg: Config, best_dir: Path, device: torch.device) -> dict[str, float] | None:
    """The best model on the test split (fp32), where the task has one."""
    if splits.test is None:
        return None
    model = AutoModelForSequenceClassification.from_pretrained(best_dir).to(device)
    tokenizer = AutoTokenizer.from_pretrained(best_dir)
    preds = evaluate(
        model, tokenizer, splits.test, batch_size=cfg.batch_size * 2, max_length=cfg.max_length, device=device
    )
    return compute_metrics(splits.test.labels, preds.tolist())


def run(cfg: Config, argv: list[str]) -> Path:
    """The whole pipeline; returns the archive path or raises (nothing is written to the store on failure)."""
    started = time.perf_counter()
    task = get_task(cfg.task)
    version = cfg.version or next_version(cfg.model_store, task.name)
    if (cfg.model_store / archive_name(task.name, version)).exists():
        raise PackagingError(
            f"{cfg.model_store / archive_name(task.name, version)} already exists: pick another --version"
        )
    prior = read_finished_run(cfg.from_run, task) if cfg.from_run else None
    teacher = student.find_teacher(cfg.student_of, task=task.name, store=cfg.model_store) if cfg.student_of else None
    if prior is not None:  # the settings the model was trained with, for the report and the card
        cfg = replace(cfg, **prior.trained)
    splits = load_data(task, cfg)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device))
    soft_labels, teacher_report = (
        distill.read(cfg.teacher_logits, task=task.name, splits=splits) if cfg.teacher_logits else (None, None)
    )
    live: distill.LiveTeacher | None = None
    if teacher is None:
        base, base_facts = resolve(cfg.base_model)
    else:  # the student's base is the teacher cut to k layers; its soft labels cover every training text
        cfg.output.mkdir(parents=True, exist_ok=True)
        begun = student.start(teacher, cfg, labels=task.labels, texts=splits.train.texts, device=device)
        cfg = replace(cfg, base_model=str(begun.folder), student_of=teacher.label)
        cfg = replace(cfg, student_layers=begun.layers, student_depth=len(begun.layers))
        base, base_facts = str(begun.folder), begun.base
        soft_labels, teacher_report, live = begun.soft_labels, begun.report, begun.live
    if prior is not None and prior.teacher is not None:  # a student packaged again still names its teacher
        teacher_report, base_facts = prior.teacher, prior.base or base_facts
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
    if prior is None:
        fitted = fit(task, splits, cfg, device, best_dir, base=base, soft_labels=soft_labels, live=live)
    else:
        shutil.copytree(prior.folder / "best", best_dir)
        fitted = prior.fit
    t1 = time.perf_counter()
    test = best_on_test(splits, cfg, best_dir, device)
    write_calibration_texts(splits.train, best_dir, seed=cfg.seed)
    check_cfg = int8_check.CheckConfig(
        metric_drop=cfg.max_int8_drop,
        engine=cfg.engine,
        quantization=cfg.quantization,
        keep_fp32=cfg.keep_fp32,
        max_length=cfg.max_length,
        threads=threads,
        study=cfg.int8_study,
        per_module=cfg.int8_per_module or cfg.student_of is not None,  # a student is made for speed
    )
    check = int8_check.check(task, splits, check_cfg, best_dir, cfg.output)
    t2 = time.perf_counter()
    outcome = RunReport(
        task=task.name,
        version=version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        command=f"{PROG} {shlex.join(argv)}",
        config=cfg,
        base=base_facts,
        device=str(device),
        threads=threads,
        labels=task.labels,
        metric=task.metric,
        data_sha256=splits.sources,
        rows={
            "train": len(splits.train),
            "augmented": splits.augmented,  # of the train rows
            "validation": len(splits.validation),
            "test": len(splits.test or []),
        },
        validation_rows=EvaluatedRows.of(splits.validation, split="validation", seed=cfg.seed),
        fit=fitted,
        trained_by=prior.trained_by if prior else None,
        teacher=teacher_report,
        test=test,
        quantization=check,
        timing=Timing(train_and_eval=round(t1 - t0, 1), quantization_check=round(t2 - t1, 1)),
        packaging=Packaging(refused=True),
    )
    report.write_plots(outcome, cfg.output)
    if check.chosen is None:
        report.write_json(outcome.as_json(), cfg.output / "metrics.json")
        best = min((c for c in check.candidates if c.eligible), key=lambda c: c.drop)
        raise Int8DropTooLarge(
            f"int8 loses {best.drop:.4f} {task.metric} against fp32 ({check.fp32_validation[task.metric]:.4f})"
            f" even with the best setting tried, more than --max-int8-drop {cfg.max_int8_drop}: not packaged "
            f"(report in {cfg.output}; try --quantization none or another base model)"
        )
    handler = handler_section(check, cfg)
    outcome = replace(
        outcome,
        packaging=Packaging(refused=False, archive=archive_name(task.name, version), handler=handler),
        timing=replace(outcome.timing, total=round(time.perf_counter() - started, 1)),
    )
    card = report.model_card(outcome)
    for folder in (cfg.output, best_dir):
        report.write_json(outcome.as_json(), folder / "metrics.json")
        (folder / "MODEL_CARD.md").write_text(card)
    archive = package(
        best_dir, name=task.name, store=cfg.model_store, version=version, serving=ServingConfig(handler=handler)
    )
    report.write_atomic(cfg.model_store / f"{task.name}-{version}.md", card)
    log.info("packaged %s (%.0f s in all)", archive, time.perf_counter() - started)
    return archive


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
