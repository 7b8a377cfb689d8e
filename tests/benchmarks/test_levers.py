"""`python -m benchmarks.levers`: docs/performance.md's levers section is what the recorded run renders, and the
benchmark itself, on a tiny teacher really trained and packaged with one module kept fp32, builds, scores and times
every lever beside the archive as served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks import levers, levers_report
from stack import doc_sections
from tests.students import SMALL, Taught
from torchserve_protocol.layout import REPO
from training.train import main as train

KEPT = "bert.encoder.layer.0.output.dense"  # the module the archive keeps fp32, as cola-1.0 keeps its FFN outputs


def test_the_performance_doc_shows_the_recorded_levers_run() -> None:
    doc = (REPO / "docs" / "performance.md").read_text()
    rendered = levers_report.render(levers_report.load())
    assert doc_sections.section(doc, levers_report.SECTION) == rendered, "run python -m benchmarks.levers again"


@pytest.fixture(scope="module")
def kept_fp32(taught: Taught, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher packaged again from its run with one FFN output kept fp32 (``--from-run``)."""
    store = tmp_path_factory.mktemp("levers-store")
    args = ["--task", "cola", "--data-dir", str(taught.data_dir), "--model-store", str(store), *SMALL]
    args += ["--from-run", str(taught.teacher_run), "--quantization", "per_channel", "--keep-fp32", KEPT]
    args += ["--max-int8-drop", "1"]  # so that int8 per module makes the kept module int8
    assert train([*args, "--version", "1.0"]) == 0
    return store / "cola-1.0.mar"


def test_every_lever_is_built_scored_timed_and_rendered(kept_fp32: Path, tmp_path: Path) -> None:
    record_path, doc = tmp_path / "levers.json", tmp_path / "performance.md"
    doc.write_text("# Performance\n\n" + "\n".join(doc_sections.markers("levers")) + "\nkept\n")
    argv = [str(kept_fp32), "--seconds", "0.5", "--repeats", "2", "--short-length", "6"]
    assert levers.main([*argv, "--record", str(record_path), "--doc", str(doc)]) == 0

    record = json.loads(record_path.read_text())
    (measured,) = record["archives"]
    assert measured["keep_fp32"] == [KEPT]
    assert measured["weights"] == str(Path(measured["weights"]))
    variants = {v["name"]: v for v in measured["variants"]}
    assert list(variants) == ["served", "threads", "max_length 6", "no length groups", "fusions", "int8 per module"]
    for v in variants.values():
        assert len(v["texts_per_s"]) == 2, v
        assert all(rate > 0 for rate in v["texts_per_s"]), v
    assert variants["threads"]["processes"] == 1
    assert variants["threads"]["handler"] == {"num_threads": 2}
    assert variants["served"]["quality"]["changed"] == 0
    assert variants["threads"]["quality"] is None
    assert variants["no length groups"]["quality"] is None
    assert {v["name"] for v in variants.values() if v["quality"]} >= {"max_length 6", "fusions", "int8 per module"}
    archive, alone = measured["modules"]  # the archive's setting, then its one fp32 module made int8
    assert (archive["keep_fp32"], archive["int8"], archive["served"]) == (1, [], False)
    assert (alone["keep_fp32"], alone["int8"], alone["served"], alone["within"]) == (0, [KEPT], True, True)
    assert archive["metric"] == variants["served"]["quality"]["metric"]  # the same archive, scored twice
    assert variants["int8 per module"]["handler"] == {"keep_fp32": []}
    assert measured["fusions"], "ONNX Runtime fused nothing in a BERT graph"
    assert doc_sections.section(doc.read_text(), "levers") == levers_report.render(record)
    assert doc.read_text().endswith("kept\n")


def test_a_variant_folder_is_the_archive_with_its_own_handler_settings(kept_fp32: Path, tmp_path: Path) -> None:
    served = levers.extract(kept_fp32, tmp_path)
    folder = levers.variant_dir(served, tmp_path, levers.Variant("threads", handler={"num_threads": 2}))
    handler = yaml.safe_load((folder / "model-config.yaml").read_text())["handler"]
    original = yaml.safe_load((served / "model-config.yaml").read_text())["handler"]
    assert handler == original | {"num_threads": 2}
    assert (folder / "model.onnx").resolve() == (served / "model.onnx").resolve()
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in served.iterdir())
