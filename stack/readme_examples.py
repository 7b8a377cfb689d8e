"""The README's example answers, produced by the running stack and checked against it.

    python -m stack.readme_examples            # compare the README's answers with what the gateway answers now
    python -m stack.readme_examples --write    # rewrite them from what it answers (after training a new default)

The README holds the examples in its ``examples`` section (:mod:`stack.doc_sections`): each request as a
curl command and the answer it got from the project's reference archives, rounded to 3 decimals. ``--check`` (the
default) exits 1 and prints both when a label differs, and, when the store holds the reference archives themselves
(found by their recorded sha256, :func:`stack.results.reference_archives`), when a probability moved by more than
:data:`TOLERANCE`. A user's own freshly trained models give the same labels with probabilities a few hundredths
off (bf16 training does not repeat bit for bit across CPUs): for them the labels are what is checked, and the
differences are printed. ``make examples`` runs the check against ``make start``'s stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from stack import doc_sections, results
from torchserve_protocol.layout import REPO, default_model_store

SECTION = "examples"  # the README's generated section (stack.doc_sections)
BEGIN, END = doc_sections.markers(SECTION)
TOLERANCE = 0.01  # the shown answers are rounded to 3 decimals; retraining on another CPU moves them a little
EXAMPLES: tuple[tuple[str, dict[str, str]], ...] = (
    ("/generate", {"passage": "I are a boy"}),
    ("/generate", {"passage": "The boy is happy."}),
    ("/predict", {"text": "Great app, but it crashes"}),
    ("/predict", {"text": "I love this app, it works perfectly"}),
)
CURL = "curl -s -X POST 127.0.0.1:8000{path} -H 'Content-Type: application/json' -d '{body}'"


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def ask(base_url: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        answers = []
        for path, body in EXAMPLES:
            response = client.post(path, json=body)
            response.raise_for_status()
            answers.append(rounded(response.json()))
        return answers


def render(answers: list[dict[str, Any]]) -> str:
    lines = ["```console"]
    for (path, body), answer in zip(EXAMPLES, answers, strict=True):
        lines += [f"$ {CURL.format(path=path, body=json.dumps(body))}", json.dumps(answer)]
    return "\n".join([*lines, "```"]) + "\n"


def shown(readme: str) -> list[dict[str, Any]]:
    """The answers the README's examples block shows, in order."""
    try:
        block = doc_sections.section(readme, SECTION)
    except doc_sections.MissingSection as exc:
        raise SystemExit(f"error: the README has {exc}") from None
    return [json.loads(line) for line in block.splitlines() if line.startswith("{")]


def differences(want: list[dict[str, Any]], got: list[dict[str, Any]], *, tolerance: float | None) -> list[str]:
    """One line per example whose label differs or (``tolerance`` given) any probability differs by more."""
    if len(want) != len(got):
        return [f"the README shows {len(want)} answers, the examples are {len(got)}"]
    out = []
    for (path, body), w, g in zip(EXAMPLES, want, got, strict=True):
        numbers_w, numbers_g = _numbers(w), _numbers(g)
        moved = len(numbers_w) != len(numbers_g) or any(
            tolerance is not None and abs(a - b) > tolerance for a, b in zip(numbers_w, numbers_g, strict=True)
        )
        if _labels(w) != _labels(g) or moved:
            out.append(f"{path} {json.dumps(body)}: README shows {json.dumps(w)}, the stack answers {json.dumps(g)}")
    return out


def _labels(answer: dict[str, Any]) -> list[Any]:
    """The answer's labels: ``/predict``'s ``sentiment``; for ``/generate``'s ``{"prob"}``, which side of 0.5."""
    if set(answer) == {"prob"}:
        return ["acceptable" if answer["prob"] >= 0.5 else "unacceptable"]
    return [v for k, v in sorted(answer.items()) if isinstance(v, str)]


def _numbers(answer: dict[str, Any]) -> list[float]:
    flat: list[float] = []
    for _, value in sorted(answer.items()):
        flat += _numbers(value) if isinstance(value, dict) else [value] if isinstance(value, int | float) else []
    return flat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.readme_examples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway (default: make start's)")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--write", action="store_true", help="rewrite the README's answers from the stack's")
    parser.add_argument(
        "--model-store", type=Path, default=default_model_store(), help="where to look for the reference archives"
    )
    args = parser.parse_args(argv)
    readme = args.readme.read_text()
    try:
        answers = ask(args.url)
    except httpx.HTTPError as exc:
        print(f"error: cannot ask the gateway at {args.url} ({exc}): start the stack first (make start)")
        return 2
    if args.write:
        shown(readme)  # refuses a README without the block
        args.readme.write_text(doc_sections.replaced(readme, SECTION, render(answers)))
        print(f"wrote {len(answers)} example answers into {args.readme}")
        return 0
    record = results.load()
    defaults = {label for label, run in record["runs"].items() if run["role"] == "default"}
    reference = set(results.reference_archives(record, args.model_store)) == defaults
    tolerance = TOLERANCE if reference else None
    found = differences(shown(readme), answers, tolerance=tolerance)
    if reference:
        ok = f"the README's {len(answers)} example answers match the reference archives' (within {TOLERANCE})"
    else:
        ok = f"your models give the README's {len(answers)} labels (the README's probabilities are the reference run's)"
        for line in differences(shown(readme), answers, tolerance=0.0):
            print(f"note: {line}")
    return doc_sections.check_result(found, ok)


if __name__ == "__main__":
    sys.exit(main())
