"""A recorded run's serving speed: its archive's in-process ceiling on this machine (:mod:`benchmarks.ceiling`: one
single-threaded process per core, batches of 8 of the task's validation texts, the archive's own handler settings),
written beside the run's training figures in docs/results/training.json for docs/training.md's comparison.

    python -m stack.results --add X.mar --label candidate/X --role candidate --write   # record the run first
    python -m benchmarks.served_speed candidate/X=X.mar --write   # then measure its archive (10 s, idle machine)
    python -m benchmarks.served_speed fast-path/cola-1.0=Y.mar    # printed only (Y: e.g. an identical rebuild)

The run's training figures stay as its report recorded them; only the measured ones (:data:`stack.results.MEASURED`)
are replaced. The record and its rendering belong to :mod:`stack.results`; measuring belongs here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.ceiling import measure as ceiling
from benchmarks.load import cola_sentences, review_texts
from benchmarks.servers import extract
from stack import results
from training.tasks import default_data_dir

BATCH = 8  # texts per forward pass, as the served defaults batch


def served_speed(archive: Path, task: str, *, seconds: float = 10) -> dict[str, Any]:
    """``archive``'s texts per second on ``task``'s validation texts, with the date and the 1-minute load average
    before it: the measured fields of a recorded run."""
    texts = (cola_sentences if task == "cola" else review_texts)(default_data_dir())
    with tempfile.TemporaryDirectory(prefix="served-speed-") as tmp:
        load = os.getloadavg()[0]
        rate = ceiling(extract(archive, Path(tmp)), texts, batch=BATCH, seconds=seconds)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return {"served_texts_per_s": round(rate, 1), "measured": {"date": when, "load_average_before": round(load, 1)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.served_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs", nargs="+", metavar="LABEL=ARCHIVE", help="measure ARCHIVE's serving speed for the recorded run LABEL"
    )
    parser.add_argument("--seconds", type=float, default=10, help="how long each archive is measured")
    parser.add_argument(
        "--write", action="store_true", help=f"record the speeds in {results.RECORD.name} and re-render its sections"
    )
    args = parser.parse_args(argv)
    record = results.load()
    measured: list[tuple[str, Path]] = []
    for pair in args.runs:
        label, _, archive = pair.partition("=")
        if label not in record["runs"] or not archive:
            parser.error(f"{pair!r}: expected LABEL=ARCHIVE with a recorded LABEL")
        measured.append((label, Path(archive)))
    for label, archive in measured:
        speed = served_speed(archive, record["runs"][label]["task"], seconds=args.seconds)
        record["runs"][label] |= speed
        print(json.dumps({"run": label, "archive": str(archive), **speed}))
    if args.write:
        results.write(record)
        print(f"wrote {results.RECORD.name} ({len(measured)} speeds) and its sections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
