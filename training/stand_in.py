"""Real-size archives without training: the default base model with an untrained classification head, packaged
through the real path (ONNX export, static int8 calibrated on training texts, the served defaults' handler settings).

    python -m training.stand_in --task cola --model-store DIR [--version 1.0] [--base-model mpnet]

A stand-in has the served default's architecture, archive size, extraction size and memory per worker, in a few
minutes instead of the half hour that training takes; its answers are meaningless (the head is random). The
real-size tier (``make test-real-size``) deploys stand-ins to size and test what users run. Its model card and
``metrics.json`` say what it is, so that nobody mistakes one for a trained model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from torchserve_protocol.layout import default_model_store
from training.base_models import BaseModelError, resolve
from training.fit import build_model
from training.package import PackagingError, ServingConfig, next_version, package
from training.tasks import DataError, get_task
from training.train import write_calibration_texts

log = logging.getLogger("training.stand_in")
SEED = 0
# The modules the served defaults keep in fp32 (docs/results/training.json, "fp32_modules": 12 for cola, 0 for
# sentiment): cola's int8 check chose the FFN down-projections (training/int8_check.py's first fallback).
KEEP_FP32 = {"cola": "ffn_out", "sentiment": None}


def ffn_down_projections(model: nn.Module) -> list[str]:
    """``*.output.dense`` outside attention: the Linear layers whose input is the wide post-GELU activation."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.endswith("output.dense") and "attention" not in name
    ]


def build(
    task_name: str,
    *,
    store: Path,
    data_dir: Path,
    version: str | None = None,
    base_model: str | None = None,
    fp32_weights: bool = False,
) -> Path:
    """Package a stand-in for ``task_name`` into ``store``; return the archive's path."""
    task = get_task(task_name)
    base_name = base_model or task.base_model
    base, facts = resolve(base_name)
    torch.manual_seed(SEED)  # the random head, reproducibly
    model, tokenizer = build_model(base, task.labels, safetensors_only=True)
    keep = ffn_down_projections(model) if KEEP_FP32[task.name] == "ffn_out" else []
    handler = ServingConfig().handler | {"keep_fp32": keep}
    with tempfile.TemporaryDirectory(prefix=f"stand-in-{task.name}-") as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_calibration_texts(task.load(data_dir).train, folder, seed=SEED)
        report = {
            "task": task.name,
            "stand_in": True,
            "trained": False,
            "base": facts,
            "packaging": {"handler": handler},
            "note": "untrained classification head: a stand-in with the default's size, never a served model",
        }
        (folder / "metrics.json").write_text(json.dumps(report, indent=2))
        (folder / "MODEL_CARD.md").write_text(
            f"# {task.name} stand-in (untrained)\n\n{base_name} ({facts.get('upstream', base_name)}) with a random "
            "classification head, packaged by `python -m training.stand_in` to size and test deployments. Its "
            "answers mean nothing: never publish it as a model.\n"
        )
        return package(
            folder,
            name=task.name,
            store=store,
            version=version or next_version(store, task.name),
            serving=ServingConfig(handler=handler),
            fp32_weights=fp32_weights,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.stand_in", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=["cola", "sentiment"])
    parser.add_argument("--model-store", type=Path, default=default_model_store())
    parser.add_argument("--version", help="archive version (default: the next major version in the store)")
    parser.add_argument("--base-model", help="a short name of training/base_models.py (default: the task's)")
    parser.add_argument("--fp32-weights", action="store_true", help="carry the fp32 weights too (as before 2026-12)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", "data")))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    try:
        path = build(
            args.task, store=args.model_store, data_dir=args.data_dir, version=args.version,
            base_model=args.base_model, fp32_weights=args.fp32_weights,
        )  # fmt: skip
    except (PackagingError, BaseModelError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {"archive": str(path), "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - started)}
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
