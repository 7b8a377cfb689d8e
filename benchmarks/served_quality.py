"""What the served models score, asked through the gateway like any client: CoLA validation MCC over ``/generate``
and review accuracy (validation and test) over ``/predict``, with the splits training uses.

    python -m benchmarks.served_quality            # against make start's gateway; prints one JSON object

The training report measures the same archive in-process; this is the end-to-end check that the stack serves it
(int8, temperature, batching and all) unchanged.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx

from training.tasks import Examples, compute_metrics, default_data_dir, get_task

BATCH = 32  # texts per batch request (under the gateway's per-request limit)


def labels_through_gateway(client: httpx.Client, task: str, ex: Examples) -> list[int]:
    """Predicted label ids for ``ex`` via the batch endpoints (answers do not depend on the batch: static int8)."""
    labels = get_task(task).labels
    path, key = ("/generate/batch", "passages") if task == "cola" else ("/predict/batch", "texts")
    predicted: list[int] = []
    for start in range(0, len(ex), BATCH):
        response = client.post(path, json={key: ex.texts[start : start + BATCH]})
        response.raise_for_status()
        for result in response.json()["results"]:
            predicted.append(int(result["prob"] >= 0.5) if task == "cola" else labels.index(result["sentiment"]))
    return predicted


def served_quality(base_url: str, data_dir: Path, *, max_rows: int | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for task in ("cola", "sentiment"):
            splits = get_task(task).load(data_dir)
            named = {"validation": splits.validation, "test": splits.test}
            for split, ex in named.items():
                if ex is None:
                    continue
                ex = ex.subset(max_rows, seed=0)
                metrics = compute_metrics(ex.labels, labels_through_gateway(client, task, ex))
                report[f"{task}/{split}"] = {"rows": len(ex), **{k: round(v, 4) for k, v in metrics.items()}}
        version = client.post("/generate", json={"passage": "I are a boy"})
        report["cola: I are a boy"] = {"prob": version.json()["prob"], "version": version.headers["X-Model-Version"]}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.served_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--max-rows", type=int, help="a seeded subset per split (smoke runs)")
    args = parser.parse_args(argv)
    print(json.dumps(served_quality(args.url, args.data_dir, max_rows=args.max_rows), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
