"""Choosing the served int8 setting through the handler's own code, on a tiny random BERT and real rows."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest

from handlers.text_classification import settings_from
from training.int8_check import FP32, Candidate, CheckConfig, Served, check, quantization_candidates
from training.tasks import Splits, get_task


def config(**overrides: object) -> CheckConfig:
    values: dict[str, object] = {"metric_drop": 0.01, "engine": "onnxruntime", "quantization": "auto"}
    values |= {"keep_fp32": (), "max_length": 64, "threads": 1}
    return CheckConfig(**(values | overrides))  # type: ignore[arg-type]


def test_auto_tries_int8_fastest_first_then_fp32_then_report_only(tiny_models: dict[str, Path]) -> None:
    candidates = quantization_candidates(tiny_models["cola"], config())
    served = [c for c in candidates if not c.report_only]
    assert [c.served.quantize for c in served] == [True] * (len(served) - 1) + [False]
    assert served[0].served == Served("onnxruntime", True, "per_channel", (), "static")
    assert all(len(a.served.keep_fp32) < len(b.served.keep_fp32) for a, b in pairwise(served[:-1]))
    assert served[-1].served == Served("onnxruntime", False)
    assert [c.served for c in candidates if c.report_only] == [
        Served("onnxruntime", True, "per_tensor", (), "static"),
        Served("onnxruntime", True, "per_channel", (), "dynamic"),
    ]


def test_fixed_schemes_and_none(tiny_models: dict[str, Path]) -> None:
    fixed = quantization_candidates(tiny_models["cola"], config(engine="torch", quantization="per_tensor",
                                                                keep_fp32=("classifier",)))  # fmt: skip
    assert fixed == [Candidate(Served("torch", True, "per_tensor", ("classifier",)))]
    assert quantization_candidates(tiny_models["cola"], config(quantization="none")) == [
        Candidate(Served("onnxruntime", False))
    ]


def test_served_settings_are_what_the_handler_reads_from_the_archive() -> None:
    served = Served("onnxruntime", True, "per_tensor", ("classifier",), "static")
    section = {"max_length": 64, "num_threads": 1, "warmup": False, **served.as_dict()}
    assert served.settings(max_length=64, threads=1) == settings_from(section)
    assert "activations" not in FP32.as_dict()  # the handler's default, as archives without the key have it


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_check_serves_the_first_candidate_within_the_bound(
    engine: str, tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    task = get_task("sentiment")
    full = task.load(data_dir)
    assert full.test is not None
    splits = Splits(full.train.subset(8, seed=0), full.validation.subset(24, seed=0), full.test.subset(16, seed=0))
    cfg = config(engine=engine)
    candidates = quantization_candidates(tiny_models["sentiment"], cfg)

    result = check(task, splits, cfg, tiny_models["sentiment"], tmp_path)

    assert result.chosen is not None
    assert result.chosen in result.candidates
    assert result.chosen.drop <= cfg.metric_drop
    assert result.candidates[-1] == result.chosen  # not a study: nothing is scored after the chosen one
    assert [c.served for c in result.candidates] == [c.served for c in candidates[: len(result.candidates)]]
    assert result.chosen.test is not None
    assert result.fp32_test is not None
    assert result.calibration is not None
    assert set(result.calibration.ece) == {"validation", "test"}
    assert result.batch_invariance is not None
    assert result.batch_invariance.texts == 24
    if engine == "onnxruntime":  # static int8: a text's answer does not depend on its batch
        assert result.batch_invariance.max_abs_delta <= 1e-5
    as_json = result.as_dict()
    assert list(as_json) == ["metric", "max_drop", "batch_size", "fp32", "candidates", "chosen", "calibration",
                             "batch_invariance"]  # fmt: skip
    assert as_json["chosen"] == as_json["candidates"][-1]
    assert not list(tmp_path.iterdir()), "the scratch folder is removed"


def test_a_negative_bound_chooses_nothing(tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    task = get_task("cola")
    full = task.load(data_dir)
    splits = Splits(full.train.subset(8, seed=0), full.validation.subset(16, seed=0), None)
    result = check(task, splits, config(engine="torch", metric_drop=-1.0), tiny_models["cola"], tmp_path)
    assert result.chosen is None
    assert result.calibration is None
    assert result.batch_invariance is None
    assert all(c.eligible for c in result.candidates)  # every servable setting was tried, none qualified
    assert result.as_dict()["chosen"] is None


def test_per_module_makes_int8_each_module_kept_fp32_that_stays_within_the_bound(
    tiny_models: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    task = get_task("cola")
    full = task.load(data_dir)
    splits = Splits(full.train.subset(8, seed=0), full.validation.subset(24, seed=0), None)
    kept = ("bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense")
    fixed = config(quantization="per_channel", keep_fp32=kept, metric_drop=1.0)  # every setting is within it

    result = check(task, splits, replace(fixed, per_module=True), tiny_models["cola"], tmp_path)

    rows = [c.served.keep_fp32 for c in result.candidates]
    assert rows == [kept, kept[1:], kept[:1], ()]  # as fixed; each module int8 alone; then both, the served one
    assert result.chosen is not None
    assert result.chosen.served.keep_fp32 == ()
    assert result.as_dict()["chosen"] == result.as_dict()["candidates"][-1]
    assert result.calibration is not None
    assert result.batch_invariance is not None
    without = check(task, splits, fixed, tiny_models["cola"], tmp_path)
    assert [c.served.keep_fp32 for c in without.candidates] == [kept]  # off unless asked (or a student's run)
