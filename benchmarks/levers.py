"""``python -m benchmarks.levers``: the cheaper levers on served archives, each beside the archive as it is served.

Each lever is a variant of one archive: a directory that looks like the extracted archive (its files linked) with
one thing changed, its handler settings or its ``model.onnx``:

- ``served``: the archive as it is, one single-threaded process per core (TorchServe's workers x 1 thread);
- ``threads``: one process with as many intra-op threads as cores (one worker x 2 threads);
- ``max_length 64``: texts cut at 64 tokens instead of the archive's 128;
- ``no length groups``: every batch padded to its longest text in one forward (``predict``'s ``slack`` = inf);
- ``fusions``: ``model.onnx`` rebuilt from the fp32 weights after ONNX Runtime's transformer fusions
  (``onnxruntime.transformers.optimizer``), then quantized with the archive's own int8 settings;
- ``int8 per module``: the modules the archive keeps fp32 made int8 as ``--int8-per-module`` would choose them
  (:func:`training.int8_check.more_int8`: each one alone, then together while within the archive's bound), every
  setting scored against the fp32 model as the training run's check scores it.

Speed: texts/s of :func:`benchmarks.ceiling.measure` on batches of 8 of the task's texts, the variants interleaved
in each of ``--repeats`` rounds (medians), so that a change of the host's speed hits them all. Quality: the task's
metric on validation through the handler's own ``load`` and ``predict``
(:func:`training.int8_check.served_probabilities`) and the share of labels that differ from ``served``'s; variants
that cannot change an answer (threads, padding: it is masked) are not scored. The rebuilds need the archive's fp32
weights, from the run folder its ``metrics.json`` names (``best/``), as ``--student-of`` finds them.

    make bench-levers   # = python -m benchmarks.levers --record docs/results/levers.json --doc docs/performance.md
    .venv/bin/python -m benchmarks.levers model_store/cola-2.0.mar --seconds 5   # one archive, printed only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks import levers_report
from benchmarks.ceiling import measure, served_settings
from benchmarks.conditions import busy_processes, load_average, machine
from benchmarks.load import cola_sentences, review_texts
from benchmarks.servers import extract, served_archives
from handlers.onnx_engine import ONNX_FILE
from handlers.text_classification import PADDING_SLACK, Settings
from stack import doc_sections
from torchserve_protocol.archives import parse_archive
from torchserve_protocol.layout import default_model_store
from training import onnx_build
from training.int8_check import Scored, Served, more_int8, served_probabilities
from training.student import archive_metrics
from training.tasks import compute_metrics, default_data_dir, get_task

BATCH = 8  # texts per forward, as the served defaults batch
SPEED_TEXTS = {"cola": cola_sentences, "sentiment": review_texts}


@dataclass(frozen=True)
class Variant:
    name: str
    handler: dict[str, Any] = field(default_factory=dict)  # overrides of the archive's handler settings
    processes: int | None = None  # None: one per core
    slack: float = PADDING_SLACK
    onnx: Path | None = None  # a rebuilt model.onnx
    scored: bool = True  # can its answers differ from served's?


def variant_dir(served: Path, root: Path, variant: Variant) -> Path:
    """``served``'s files linked into a folder of ``root``, with ``variant``'s handler settings and ``model.onnx``."""
    folder = Path(tempfile.mkdtemp(prefix=variant.name.replace(" ", "-") + "-", dir=root))
    config = yaml.safe_load((served / "model-config.yaml").read_text())
    config["handler"] = {**config["handler"], **variant.handler}
    (folder / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for item in served.iterdir():
        if item.name not in ("model-config.yaml", ONNX_FILE):
            (folder / item.name).symlink_to(item.resolve())
    (folder / ONNX_FILE).symlink_to((variant.onnx or served / ONNX_FILE).resolve())
    return folder


def weights_of(archive: Path) -> Path | None:
    """The fp32 ``best/`` folder of the run that packaged ``archive`` (None: no run named, or its folder is gone)."""
    output = (archive_metrics(archive).get("hyperparameters") or {}).get("output")
    best = Path(output) / "best" if output else None
    return best if best is not None and (best / "model.safetensors").is_file() else None


def quantized(fp32: Path, weights: Path, settings: Settings, dst: Path) -> Path:
    """``fp32`` quantized as ``settings`` say (static int8 calibrated on the run's own texts), as packaging does."""
    static = settings.activations == "static"
    return onnx_build.quantize_int8(
        fp32,
        dst,
        scheme=settings.quantization,
        keep_fp32=settings.keep_fp32,
        activations=settings.activations,
        calibration=onnx_build.calibration_texts(weights) if static else (),
        model_dir=weights,
        max_length=settings.max_length,
    )


def fused(fp32: Path, weights: Path, dst: Path) -> tuple[Path, dict[str, int]]:
    """``fp32`` after ONNX Runtime's transformer fusions, and how many of each fused operator they made."""
    from onnxruntime.transformers import optimizer
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(weights)
    heads, hidden = config.num_attention_heads, config.hidden_size
    model = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    model.save_model_to_file(str(dst))
    return dst, {op: n for op, n in model.get_fused_operator_statistics().items() if n}


@dataclass
class Scorer:
    """The task's validation metric of a variant's folder and the share of its labels that differ from served's."""

    task: str
    data_dir: Path
    served: list[int] | None = None  # served's labels: the first folder scored

    def __call__(self, folder: Path) -> dict[str, float]:
        task = get_task(self.task)
        val = task.load(self.data_dir).validation
        labels = served_probabilities(folder, val, served_settings(folder)).argmax(axis=1).tolist()
        self.served = self.served or labels
        changed = sum(a != b for a, b in zip(labels, self.served, strict=True)) / len(labels)
        return {"metric": round(compute_metrics(val.labels, labels)[task.metric], 4), "changed": round(changed, 4)}


def served_as(settings: Settings) -> Served:
    """The int8 check's description of what an archive's handler settings serve."""
    return Served(settings.engine, settings.quantize, settings.quantization, settings.keep_fp32, settings.activations)


def max_drop(archive: Path) -> float:
    """The int8 bound the archive was checked with (its metrics.json)."""
    return float((archive_metrics(archive).get("quantization") or {}).get("max_drop", 0.01))


def module_row(row: Scored, served: Settings, metric: str, *, chosen: Scored, bound: float) -> dict[str, Any]:
    """One setting of the int8-per-module study, as the record keeps it."""
    keep = row.served.keep_fp32
    return {"keep_fp32": len(keep), "int8": sorted(set(served.keep_fp32) - set(keep)),
            "metric": round(row.validation[metric], 4), "drop": round(row.drop, 4), "flips": round(row.flips, 4),
            "within": row.drop <= bound, "served": row == chosen}  # fmt: skip


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def variants_of(archive: Path, served: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One archive's variants (built and scored) and its per-module study, before any speed is measured."""
    log(f"{archive.name}: building and scoring its variants")
    name = parse_archive(archive)
    task = get_task(name.name if name else archive.stem.split("-")[0])
    settings = served_settings(served)
    score = Scorer(task.name, args.data_dir)
    cores = os.cpu_count() or 1
    variants = [
        Variant("served"),
        Variant("threads", handler={"num_threads": cores}, processes=1, scored=False),
        Variant(f"max_length {args.short_length}", handler={"max_length": args.short_length}),
        Variant("no length groups", slack=math.inf, scored=False),
    ]
    out: dict[str, Any] = {"archive": archive.name, "task": task.name, "metric": task.metric, "weights": None}
    out |= {"keep_fp32": list(settings.keep_fp32), "fusions": None, "modules": []}
    weights = weights_of(archive) if settings.engine == "onnxruntime" and settings.quantize else None
    quality = {"served": score(served)}
    if weights is not None:
        out["weights"] = str(weights)
        fp32 = onnx_build.export_fp32(weights, work / "fp32.onnx")
        graph, out["fusions"] = fused(fp32, weights, work / "fused-fp32.onnx")
        variants.append(Variant("fusions", onnx=quantized(graph, weights, settings, work / "fused.onnx")))
        if settings.keep_fp32:  # int8 per module, as a --int8-per-module run would choose it
            rows, chosen = more_int8(task, task.load(args.data_dir).validation, served_as(settings), weights,
                                     work, max_drop=max_drop(archive), max_length=settings.max_length)  # fmt: skip
            out["modules"] = [
                module_row(r, settings, task.metric, chosen=chosen, bound=max_drop(archive)) for r in rows
            ]
            if chosen.served.keep_fp32 != settings.keep_fp32:
                more = settings.model_copy(update={"keep_fp32": chosen.served.keep_fp32})
                onnx = quantized(fp32, weights, more, work / "int8-per-module.onnx")
                variants.append(Variant("int8 per module", handler={"keep_fp32": list(more.keep_fp32)}, onnx=onnx))
    folders = {v.name: variant_dir(served, work, v) for v in variants}
    for v in variants:
        if v.scored and v.name not in quality:
            quality[v.name] = score(folders[v.name])
    out["variants"] = [
        {"name": v.name, "processes": v.processes or cores, "handler": v.handler, "quality": quality.get(v.name),
         "texts_per_s": []}
        for v in variants
    ]  # fmt: skip
    out["_run"] = [(v, folders[v.name], SPEED_TEXTS[task.name](args.data_dir)) for v in variants]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.levers", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "archives", nargs="*", type=Path, help="the .mar files measured (default: the store's default versions)"
    )
    p.add_argument("--model-store", type=Path, default=default_model_store(), help="where the default archives are")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--seconds", type=float, default=10, help="seconds per speed measurement")
    p.add_argument("--repeats", type=int, default=3, help="rounds of every variant, interleaved (medians shown)")
    p.add_argument("--short-length", type=int, default=64, help="the max_length lever's value")
    p.add_argument("--record", type=Path, help="write the run here as JSON (docs/results/levers.json)")
    p.add_argument("--doc", type=Path, help="replace this Markdown file's levers section (docs/performance.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started, clock = dt.datetime.now(dt.UTC), time.monotonic()
    record: dict[str, Any] = {"started": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    record |= {"seconds": args.seconds, "repeats": args.repeats, "batch": BATCH}
    record["command"] = "python -m benchmarks.levers " + shlex.join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="levers-") as tmp:
        archives = []
        for n, archive in enumerate(args.archives or served_archives(args.model_store).values()):
            work = Path(tmp) / str(n)
            work.mkdir()
            archives.append(variants_of(archive, extract(archive, work), work, args))
        record |= {"loadavg_before": load_average(), "busy": busy_processes()}
        log(f"speeds: {sum(len(a['variants']) for a in archives)} variants x {args.repeats} rounds")
        for round_ in range(args.repeats):
            for measured in archives:
                for row, (variant, folder, texts) in zip(measured["variants"], measured["_run"], strict=True):
                    rate = measure(folder, texts, batch=BATCH, processes=variant.processes, seconds=args.seconds,
                                   slack=variant.slack)  # fmt: skip
                    row["texts_per_s"].append(round(rate, 1))
                    log(f"round {round_ + 1}: {measured['archive']} {variant.name}: {rate:.1f} texts/s")
    for measured in archives:
        del measured["_run"]
        for row in measured["variants"]:
            row["median"] = statistics.median(row["texts_per_s"])
    record |= {"archives": archives, "minutes": round((time.monotonic() - clock) / 60, 1)}
    print(json.dumps(record, indent=2))
    if args.record:
        args.record.write_text(json.dumps(record, indent=2) + "\n")
    if args.doc:
        text = args.doc.read_text()
        args.doc.write_text(doc_sections.replaced(text, levers_report.SECTION, levers_report.render(record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
