"""The task table's readers: a bad data file names the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.tasks import DataError, EvaluatedRows, Examples, fmt, read_cola_tsv


def test_cola_file_with_wrong_columns_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "in_domain_train.tsv"
    bad.write_text("gj04\t1\t\tFine sentence.\ngj04\tyes\tA second one\n")
    with pytest.raises(DataError, match=r"in_domain_train.tsv:2: expected 4 tab-separated columns"):
        read_cola_tsv(bad)


def test_metrics_log_line() -> None:
    assert fmt({"mcc": 0.45123, "accuracy": 0.8}) == "mcc 0.4512 accuracy 0.8000"


def test_the_evaluated_rows_are_drawn_again_from_the_same_data_and_not_from_other_data() -> None:
    full = Examples([f"sentence {i}" for i in range(50)], [i % 2 for i in range(50)])
    evaluated = full.subset(12, seed=42)
    record = EvaluatedRows.of(evaluated, split="validation", seed=42)
    assert (record.count, record.seed, record.split) == (12, 42, "validation")
    assert record.draw(full) == evaluated
    assert EvaluatedRows.of(record.draw(full), split="validation", seed=42) == record
    every = EvaluatedRows.of(full, split="validation", seed=42)  # no subset: every row, whatever the seed
    assert every.draw(full) == full
    one_more = Examples([*full.texts, "sentence 50"], [*full.labels, 0])  # another release of the data
    assert EvaluatedRows.of(record.draw(one_more), split="validation", seed=42).sha256 != record.sha256
    relabelled = Examples(evaluated.texts, [1 - v for v in evaluated.labels])
    assert EvaluatedRows.of(relabelled, split="validation", seed=42).sha256 != record.sha256
