"""A recorded run's serving speed: measured on its archive (the in-process ceiling, cut to one second here),
written into the training record beside the run's report figures, and rendered in the candidates' comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import served_speed
from stack import doc_sections, results


def test_a_recorded_runs_speed_is_measured_recorded_and_rendered(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = next(r for r in results.load()["runs"].values() if r["task"] == "sentiment" and r["role"] == "default")
    run = {k: v for k, v in run.items() if k not in results.MEASURED}
    record = tmp_path / "training.json"
    record.write_text(json.dumps({"runs": {"sentiment-1.0": run}}))
    doc = tmp_path / "training.md"
    doc.write_text("\n".join(doc_sections.markers("results:candidates")) + "\n")
    monkeypatch.setattr(results, "RECORD", record)
    monkeypatch.setattr(results, "SECTIONS", ((doc, "results:candidates", results.candidates_section),))

    archive = tiny_store / "sentiment-1.0.mar"
    assert served_speed.main([f"sentiment-1.0={archive}", "--seconds", "1", "--write"]) == 0

    recorded = json.loads(record.read_text())["runs"]["sentiment-1.0"]
    assert recorded["served_texts_per_s"] > 0
    assert set(recorded) - set(run) == set(results.MEASURED)
    assert {k: v for k, v in recorded.items() if k not in results.MEASURED} == run  # the report's figures stay
    assert f"| {recorded['served_texts_per_s']:.0f} |" in doc.read_text()
    assert json.loads(capsys.readouterr().out.splitlines()[0])["served_texts_per_s"] == recorded["served_texts_per_s"]


def test_a_speed_for_a_run_that_is_not_recorded_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        served_speed.main(["no-such-run=x.mar"])
    assert exit_info.value.code == 2
    assert "expected LABEL=ARCHIVE with a recorded LABEL" in capsys.readouterr().err
