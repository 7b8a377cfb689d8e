"""Training figures in README.md and docs/training.md, generated from the training reports of the runs they quote.

    python -m stack.results                          # check: do the docs show what docs/results/training.json holds?
    python -m stack.results --add model_store/cola-1.0.mar --add model_store/sentiment-1.0.mar --write
    python -m stack.results --add X.mar --label candidate/X --role candidate --write
    python -m stack.results --write                  # re-render the docs' sections from the record

Each run is recorded once, in ``docs/results/training.json``, as a summary of the ``metrics.json`` its archive
carries (the report training wrote: nothing is typed by hand). The README's ``results:quality`` section and
docs/training.md's ``results:runs`` section are rendered from that record; the check (the default, and
``tests/stack/test_results.py``) fails when a section differs from its rendering, and when an archive the record
names is in the model store (the very file: its recorded sha256) but its report says something else. A run's
serving speed (:data:`MEASURED`) is measured on its archive by ``python -m benchmarks.served_speed``, which records
it here through :func:`write` (benchmarks measure the stack; the stack imports no benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from stack import doc_sections
from torchserve_protocol.layout import REPO
from training.tasks import sha256

RECORD = REPO / "docs" / "results" / "training.json"
README = REPO / "README.md"
TRAINING_DOC = REPO / "docs" / "training.md"
ROLES = {
    "default": "the served default (README's examples)",
    "first-run": "a fresh clone's `make serve`",
    "fast-path": "a fresh clone's `make serve BASE_MODEL=minilm`",
    "candidate": "a candidate for the default, measured to choose it",
}
# Figures measured on an archive (benchmarks.served_speed), not read from its training report (drift ignores them).
MEASURED = ("served_texts_per_s", "measured")
# The archive's own sha256, recorded with the run: how the check knows the project's reference archive from a user's
# own archive of the same name (bf16 training does not repeat bit for bit across machines).
ARCHIVE_HASH = "sha256"
# The original projects' figures the README compares with (from their own reports, not measured here).
ORIGINAL = {
    "cola": "0.572 MCC (bert-base-uncased, GPU)",
    "sentiment": "0.883 accuracy (tutorial: bert-base-cased, its own ~15.7k reviews)",
}
METRIC_NAMES = {"mcc": "MCC"}
SPLIT_SIZE = {"cola": "validation, 1,043 sentences", "sentiment": "test, 403 reviews"}


def _get(tree: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures the docs quote, read from one run's ``metrics.json``."""
    metric = metrics["metric"]
    quantization = metrics.get("quantization") or {}
    chosen = quantization.get("chosen") or {}
    calibration = quantization.get("calibration") or {}
    ece = calibration.get("ece") or {}
    return {
        "task": metrics["task"],
        "archive": _get(metrics, "packaging.archive"),
        "created": metrics.get("created"),
        "base": _get(metrics, "base.name") or metrics.get("base_model"),
        "upstream": _get(metrics, "base.upstream"),
        "epochs": _epochs(metrics),
        "augment": _get(metrics, "hyperparameters.augment") or "none",
        "lr": _get(metrics, "hyperparameters.lr"),
        "precision": _get(metrics, "hyperparameters.precision"),
        "metric": METRIC_NAMES.get(metric, metric),
        "fp32": {split: _get(quantization, f"fp32.{split}.{metric}") for split in ("validation", "test")},
        "served": {split: _get(chosen, f"{split}.{metric}") for split in ("validation", "test")},
        "activations": _get(chosen, "served.activations"),
        "fp32_modules": len(_get(chosen, "served.keep_fp32") or []),
        "temperature": calibration.get("temperature"),
        "ece": {split: [v.get("before"), v.get("after")] for split, v in sorted(ece.items())},
        "batch_invariance": _get(quantization, "batch_invariance.max_abs_delta"),
        # a run packaged again from a finished one (--from-run) did not train: its time is not a training time
        "training_s": None if _get(metrics, "hyperparameters.from_run") else _get(metrics, "timing_s.total"),
        "command": _get(metrics, "trained_by.command") or metrics.get("command"),
        "teacher": teacher(metrics),
        "max_int8_drop": quantization.get("max_drop"),
        "int8_candidates": [
            {
                "setting": setting(candidate["served"]),
                "validation": _get(candidate, f"validation.{metric}"),
                "drop": candidate.get("drop"),
                "flips": candidate.get("flips"),
                "eligible": candidate.get("eligible"),
                "served": candidate["served"] == chosen.get("served"),
            }
            for candidate in quantization.get("candidates") or []
        ],
    }


def teacher(metrics: dict[str, Any]) -> str | None:
    """A distilled run's teacher in words: its base and its validation metric."""
    facts = _get(metrics, "teacher.teacher")
    if not facts:
        return None
    score = _get(facts, f"best_validation.{metrics['metric']}")
    scored = f", validation {METRIC_NAMES.get(metrics['metric'], metrics['metric'])} {score:.3f}" if score else ""
    return f"{facts.get('base_model')}{scored}"


def setting(served: dict[str, Any]) -> str:
    """An int8 candidate in words: what the handler would serve."""
    if not served.get("quantize"):
        return "fp32 (no int8)"
    kept = len(served.get("keep_fp32") or [])
    islands = f", {kept} modules kept fp32" if kept else ", every MatMul int8"
    granularity = str(served.get("quantization", "")).replace("_", "-")
    return f"int8 {granularity}, {served.get('activations', 'dynamic')} activations{islands}"


def archive_metrics(archive: Path) -> dict[str, Any]:
    with zipfile.ZipFile(archive) as mar:
        return json.loads(mar.read("metrics.json"))


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _epochs(metrics: dict[str, Any]) -> int | str | None:
    """``2``, or ``"1 of 2"`` for a run stopped part-way through a longer learning-rate schedule."""
    epochs = _get(metrics, "hyperparameters.epochs")
    schedule = _get(metrics, "hyperparameters.schedule_epochs")
    return epochs if schedule in (None, epochs) else f"{epochs} of {schedule}"


def _recipe(run: dict[str, Any]) -> str:
    """``mpnet, 2, 3e-05``: base, epochs and lr, and the extra training rows where there were any."""
    extra = run.get("augment", "none")  # runs recorded before --augment existed had none
    return f"{run['base']}, {run['epochs']}, {run['lr']}" + ("" if extra == "none" else f", + {extra} errors")


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.0f} min"


def quality_section(record: dict[str, Any]) -> str:
    """The README's table: each task's served default against the original project."""
    lines = [
        "| task: served default (static int8, through the gateway) | this project | the original |",
        "|---|---|---|",
    ]
    for label, run in sorted(record["runs"].items()):
        if run["role"] != "default":
            continue
        split = "test" if run["served"]["test"] is not None else "validation"
        lines.append(
            f"| {run['task']} ({SPLIT_SIZE[run['task']]}): `{label}`, {run['base']} | "
            f"**{_num(run['served'][split])}** {run['metric']} ({split}) | {ORIGINAL[run['task']]} |"
        )
    return "\n".join(lines) + "\n"


def runs_section(record: dict[str, Any]) -> str:
    """docs/training.md's table: every recorded run, as its training report states it."""
    lines = [
        "| run | what it is | base, epochs, lr, precision | metric | fp32 validation | served validation | "
        "served test | temperature | ECE validation before -> after | ECE test before -> after | "
        "batch invariance max abs delta | training time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, run in sorted(record["runs"].items(), key=lambda item: (item[1]["task"], item[1]["role"], item[0])):
        ece = {split: " -> ".join(map(_num, run["ece"].get(split) or [None, None])) for split in ("validation", "test")}
        lines.append(
            f"| `{label}` | {ROLES[run['role']]} | {_recipe(run)}, {run['precision']} | "
            f"{run['metric']} | {_num(run['fp32']['validation'])} | **{_num(run['served']['validation'])}** | "
            f"{_num(run['served']['test'])} | {_num(run['temperature'], 2)} | {ece['validation']} | {ece['test']} | "
            f"{_num(run['batch_invariance'], 6)} | {_minutes(run['training_s'])} |"
        )
    return "\n".join(lines) + "\n"


def candidates_section(record: dict[str, Any]) -> str:
    """docs/training.md's comparison: per task, every run that could be the default, with its serving speed."""
    lines = [
        "| task | run | base, epochs, lr | distilled from | served validation | served test | "
        "texts/s served (2 cores) | training time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shown = [(label, run) for label, run in record["runs"].items() if run["role"] != "first-run"]
    for label, run in sorted(shown, key=lambda item: (item[1]["task"], item[1]["role"] != "default", item[0])):
        default = " (**default**)" if run["role"] == "default" else ""
        # a default's first run from a fresh clone is the time a user waits (a --from-run default did not train)
        seconds = record["runs"].get(f"first-run/{label}", {}).get("training_s") or run["training_s"]
        lines.append(
            f"| {run['task']} | `{label}`{default} | {_recipe(run)} | "
            f"{run.get('teacher') or '-'} | {_num(run['served']['validation'])} {run['metric']} | "
            f"{_num(run['served']['test'])} | {_num(run.get('served_texts_per_s'), 0)} | "
            f"{_minutes(seconds)} |"
        )
    measured = [run["measured"] for _, run in shown if run.get("measured")]
    if measured:
        dates = ", ".join(sorted({m["date"] for m in measured}))
        loads = [m["load_average_before"] for m in measured]
        lines += [
            "",
            f"Serving speeds measured on {dates}, one archive after another, the 1-minute load average "
            f"{min(loads)}-{max(loads)} before each (it counts the previous measurement's own processes); the full "
            "stack's figures for the defaults are in benchmarks.md.",
        ]
    return "\n".join(lines) + "\n"


def int8_section(record: dict[str, Any]) -> str:
    """docs/training.md's int8 table: every candidate the check of each recorded default scored, in its order, and
    of each run that scored them all (``--int8-study``)."""
    lines = [
        "| run | candidate | validation metric | drop vs fp32 | labels changed | within the bound | served |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, run in sorted(record["runs"].items()):
        studied = not all(candidate["eligible"] for candidate in run["int8_candidates"])
        if run["role"] != "default" and not studied:
            continue
        for candidate in run["int8_candidates"]:
            lines.append(
                f"| `{label}` | {candidate['setting']} | {_num(candidate['validation'])} {run['metric']} | "
                f"{_num(candidate['drop'])} | {_num(100 * candidate['flips'], 1)}% | "
                f"{_bound(candidate['drop'], run['max_int8_drop'])} | "
                f"{'**served**' if candidate['served'] else '' if candidate['eligible'] else 'study only'} |"
            )
    return "\n".join(lines) + "\n"


def _bound(drop: float | None, max_drop: float | None) -> str:
    if drop is None or max_drop is None:
        return "-"
    return f"yes (<= {max_drop})" if drop <= max_drop else "no"


SECTIONS = (
    (README, "results:quality", quality_section),
    (TRAINING_DOC, "results:runs", runs_section),
    (TRAINING_DOC, "results:int8", int8_section),
    (TRAINING_DOC, "results:candidates", candidates_section),
)


def reference_archives(record: dict[str, Any], store: Path) -> dict[str, Path]:
    """The recorded default runs whose very archive is in ``store``: the file's sha256 is the recorded one (a run
    recorded before hashes were: its report's creation time is). A user's own ``cola-1.0.mar`` is not one of them."""
    found = {}
    for label, run in record["runs"].items():
        archive = store / f"{label}.mar"
        if run["role"] != "default" or not archive.is_file():
            continue
        if ARCHIVE_HASH in run:
            if sha256(archive) == run[ARCHIVE_HASH]:
                found[label] = archive
        elif report_created(archive) == run.get("created"):
            found[label] = archive
    return found


def report_created(archive: Path) -> str | None:
    """When the archive's training report was written; ``None`` for an archive with no report (built by hand)."""
    try:
        created = archive_metrics(archive).get("created")
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None
    return str(created) if created is not None else None


def doc_drift(record: dict[str, Any]) -> list[str]:
    """The doc sections that differ from what the record renders."""
    return [
        f"{doc.relative_to(REPO)}: the {name} section is not what {RECORD.name} renders"
        for doc, name, render in SECTIONS
        if doc_sections.section(doc.read_text(), name) != render(record)
    ]


def archive_drift(record: dict[str, Any], store: Path) -> list[str]:
    """The recorded runs whose reference archive in ``store`` reports other figures than the record."""
    problems = []
    for label, archive in reference_archives(record, store).items():
        run = record["runs"][label]
        fresh = {**summary(archive_metrics(archive)), "role": run["role"]}
        if fresh != {k: v for k, v in run.items() if k not in (*MEASURED, ARCHIVE_HASH)}:
            problems.append(f"{label}: {archive} reports other figures than {RECORD.name} records")
    return problems


def drift(record: dict[str, Any], store: Path) -> list[str]:
    """What disagrees: a doc section and its rendering, or a recorded run and its reference archive in ``store``."""
    return doc_drift(record) + archive_drift(record, store)


def load() -> dict[str, Any]:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {"runs": {}}


def write(record: dict[str, Any]) -> None:
    """Write ``record`` to docs/results/training.json and re-render the docs' sections from it."""
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    for doc, name, render in SECTIONS:
        doc.write_text(doc_sections.replaced(doc.read_text(), name, render(record)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--add", type=Path, action="append", default=[], help="an archive (.mar) to record")
    parser.add_argument("--label", help="the run's name in the docs (default: the archive's name; one --add only)")
    parser.add_argument("--role", choices=sorted(ROLES), default="default", help="what the run is")
    parser.add_argument("--write", action="store_true", help=f"write {RECORD.name} and the docs' sections")
    parser.add_argument("--model-store", type=Path, default=REPO / "model_store", help="where to compare archives")
    args = parser.parse_args(argv)
    record = load()
    if args.label and len(args.add) != 1:
        parser.error("--label names one --add")
    for archive in args.add:
        label = args.label or archive.name.removesuffix(".mar")
        run = {**summary(archive_metrics(archive)), "role": args.role, ARCHIVE_HASH: sha256(archive)}
        kept = {k: v for k, v in record["runs"].get(label, {}).items() if k in MEASURED}  # a re-added run's speed
        record["runs"][label] = run | kept
    if args.write:
        write(record)
        print(f"wrote {RECORD.relative_to(REPO)} ({len(record['runs'])} runs) and its sections")
        return 0
    ok = f"the docs show what {RECORD.relative_to(REPO)} records ({len(record['runs'])} runs)"
    return doc_sections.check_result(drift(record, args.model_store), ok)


if __name__ == "__main__":
    sys.exit(main())
