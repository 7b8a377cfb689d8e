"""The task table's readers: a bad data file names the file and the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.tasks import DataError, fmt, read_cola_tsv


def test_cola_file_with_wrong_columns_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "in_domain_train.tsv"
    bad.write_text("gj04\t1\t\tFine sentence.\ngj04\tyes\tA second one\n")
    with pytest.raises(DataError, match=r"in_domain_train.tsv:2: expected 4 tab-separated columns"):
        read_cola_tsv(bad)


def test_metrics_log_line() -> None:
    assert fmt({"mcc": 0.45123, "accuracy": 0.8}) == "mcc 0.4512 accuracy 0.8000"
