"""The training figures in the docs: rendered from docs/results/training.json, which records real training reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stack import doc_sections, results
from torchserve_protocol.layout import REPO
from training.tasks import sha256
from training.train import main as train_main


def test_the_docs_show_what_the_record_holds() -> None:
    """README.md's and docs/training.md's sections are what the record renders."""
    assert results.doc_drift(results.load()) == []


def test_the_reference_archives_report_what_the_record_holds() -> None:
    """Where the store holds the project's own reference archives (found by their recorded hash), their training
    reports still say what the record does. A user's own freshly trained archives are not the reference."""
    record = results.load()
    found = results.reference_archives(record, REPO / "model_store")
    if not found:
        pytest.skip("model_store/ holds none of the recorded reference archives (found by hash): nothing to compare")
    assert results.archive_drift(record, REPO / "model_store") == []


def test_every_task_has_exactly_one_recorded_default() -> None:
    defaults = [run["task"] for run in results.load()["runs"].values() if run["role"] == "default"]
    assert sorted(defaults) == ["cola", "sentiment"]


def test_a_hand_edited_figure_is_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = results.load()
    doc = tmp_path / "training.md"
    doc.write_text(f"# t\n\n{doc_sections.markers('results:runs')[0]}\n{doc_sections.markers('results:runs')[1]}\n")
    doc.write_text(doc_sections.replaced(doc.read_text(), "results:runs", results.runs_section(record)))
    monkeypatch.setattr(results, "SECTIONS", ((doc, "results:runs", results.runs_section),))
    monkeypatch.setattr(results, "REPO", tmp_path)
    assert results.drift(record, tmp_path) == []

    served = next(iter(record["runs"].values()))["served"]["validation"]
    doc.write_text(doc.read_text().replace(f"**{served:.3f}**", f"**{served + 0.1:.3f}**", 1))
    assert results.drift(record, tmp_path) == [
        "training.md: the results:runs section is not what training.json renders"
    ]


def test_a_recorded_run_is_its_archives_training_report(
    tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real (tiny) training run's archive, recorded: the figures are the report's; a changed report is drift."""
    store = tmp_path / "store"
    small = [
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-train-rows",
        "32",
        "--max-eval-rows",
        "24",
        "--max-length",
        "32",
    ]
    args = ["--task", "sentiment", "--base-model", str(tiny_models["sentiment"]), "--data-dir", str(data_dir)]
    assert train_main([*args, "--output", str(tmp_path / "run"), "--model-store", str(store), *small]) == 0
    archive = store / "sentiment-1.0.mar"
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())

    run = results.summary(results.archive_metrics(archive))
    chosen = report["quantization"]["chosen"]
    assert run["served"] == {"validation": chosen["validation"]["accuracy"], "test": chosen["test"]["accuracy"]}
    assert run["fp32"]["validation"] == report["quantization"]["fp32"]["validation"]["accuracy"]
    assert run["temperature"] == report["quantization"]["calibration"]["temperature"]
    assert run["training_s"] == report["timing_s"]["total"]

    monkeypatch.setattr(results, "SECTIONS", ())
    record = {"runs": {"sentiment-1.0": {**run, "role": "default", "sha256": sha256(archive)}}}
    assert results.reference_archives(record, store) == {"sentiment-1.0": archive}
    assert results.drift(record, store) == []
    record["runs"]["sentiment-1.0"]["served"]["test"] = 0.99
    assert results.drift(record, store) == [
        f"sentiment-1.0: {archive} reports other figures than training.json records"
    ]

    # a user's own archive of the same name (another hash) is not the reference: not compared, not drift
    record["runs"]["sentiment-1.0"]["sha256"] = "0" * 64
    assert results.reference_archives(record, store) == {}
    assert results.drift(record, store) == []
    # a run recorded before hashes were is found by its report's creation time
    del record["runs"]["sentiment-1.0"]["sha256"]
    assert results.reference_archives(record, store) == {"sentiment-1.0": archive}
    record["runs"]["sentiment-1.0"]["created"] = "2026-11-30T00:00:00+00:00"
    assert results.reference_archives(record, store) == {}

    # a figure measured on the archive (its serving speed: benchmarks.served_speed) is not part of its training
    # report: not drift
    fresh = results.summary(results.archive_metrics(archive))
    speed = {"served_texts_per_s": 123.4, "measured": {"date": "2026-12-01", "load_average_before": 0.5}}
    assert set(speed) == set(results.MEASURED)
    record["runs"]["sentiment-1.0"] = {**fresh, "role": "default", **speed}
    assert results.drift(record, store) == []
    assert "| 123 |" in results.candidates_section(record)


def test_the_comparison_shows_each_candidate_with_its_teacher_and_leaves_out_first_run_repeats() -> None:
    run = next(r for r in results.load()["runs"].values() if r["role"] == "default")
    record = {
        "runs": {
            "plain": {**run, "role": "candidate", "teacher": None},
            "student": {**run, "role": "candidate", "teacher": "mpnet, validation MCC 0.531"},
            "repeat": {**run, "role": "first-run"},
        }
    }
    table = results.candidates_section(record)
    assert "`student` |" in table
    assert "| mpnet, validation MCC 0.531 |" in table
    assert "`plain` |" in table
    assert "`repeat`" not in table
