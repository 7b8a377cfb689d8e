"""`python -m benchmarks.footprint` on the tiny store: a real TorchServe registers each archive and every figure the
sizing table is derived from comes back measured."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from benchmarks import footprint

pytestmark = pytest.mark.integration


def test_every_archive_is_measured_on_a_real_torchserve(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "footprint.json"
    assert footprint.main(["--model-store", str(tiny_store), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    names = sorted(p.name for p in tiny_store.glob("*.mar"))
    assert [a["archive"] for a in figures["archives"]] == names
    for measured in figures["archives"]:
        archive = tiny_store / measured["archive"]
        unpacked = sum(info.file_size for info in zipfile.ZipFile(archive).infolist())
        assert measured["bytes"] == archive.stat().st_size
        assert measured["extracted_bytes"] >= unpacked  # TorchServe unpacks the whole archive into its TEMP
        assert measured["workers"] == len(measured["worker_rss_mib"]) > 0
        assert all(
            rss >= uss > 0 for rss, uss in zip(measured["worker_rss_mib"], measured["worker_uss_mib"], strict=True)
        )
    assert figures["tree_rss_mib"] > figures["frontend_rss_mib"] > 0
