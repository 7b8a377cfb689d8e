"""Package a ``save_pretrained`` directory into a versioned TorchServe archive in the model store.

    python -m training.package --model-dir DIR --name cola [--version 2.0] [--model-store model_store]

The archive is ``<store>/<name>-<version>.mar`` and holds ``model.onnx`` for the ``onnxruntime`` engine (built here,
int8 unless the handler settings say ``quantize: false``; see training/onnx_build.py), the fp32 weights only where a
path loads them (the ``torch`` engine, which quantizes at load time, or ``--fp32-weights`` for CUDA),
``config.json`` (with ``id2label``), the tokenizer files, ``MODEL_CARD.md`` / ``metrics.json`` when the model
directory has them, the ``handlers`` package and a ``model-config.yaml`` with the serving defaults below. It is
built under a temporary name and renamed into place, so the store never holds a half-written archive.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

import torchserve_protocol
from handlers.text_classification import WEIGHTS_FILE, Settings, settings_from
from torchserve_protocol.archives import MODEL_NAME_RE, VERSION_RE, archive_name, version_key, versions_in
from torchserve_protocol.layout import REPO, default_model_store
from training import onnx_build

HANDLER_FILE = REPO / "handlers" / "text_classifier_handler.py"
# Packages the handler imports, carried in the archive (TorchServe puts the archive's root on the worker's path).
HANDLER_PACKAGES = (REPO / "handlers", Path(torchserve_protocol.__file__).parent)
MODEL_FILES = ("config.json", WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json")
OPTIONAL_FILES = ("special_tokens_map.json", "vocab.txt", "MODEL_CARD.md", "metrics.json")


class PackagingError(RuntimeError):
    """A packaging request that cannot be carried out; the message says what was expected."""


@dataclass
class ServingConfig:
    """What goes into ``model-config.yaml``: TorchServe's batching/worker keys and the handler's settings.

    Defaults chosen by measurement on a 2-core CPU (docs/performance.md): two single-threaded workers per model (one
    model under load keeps both cores busy; four single-threaded processes share two cores without the
    oversubscription that multi-threaded workers suffer), batches of up to 8 requests gathered for at most 2 ms (a
    longer delay costs a lone request latency for no throughput under load, where the queue fills batches anyway).
    """

    min_workers: int = 2
    max_workers: int = 2
    batch_size: int = 8
    max_batch_delay_ms: int = 2
    response_timeout_s: int = 30
    handler: dict[str, Any] = field(
        default_factory=lambda: {
            "max_length": 128,
            "engine": "onnxruntime",
            "num_threads": 1,
            "quantize": True,
            "activations": "static",  # calibrated on the model directory's calibration.json
        }
    )

    def to_yaml(self) -> str:
        return yaml.safe_dump(
            {
                "minWorkers": self.min_workers,
                "maxWorkers": self.max_workers,
                "batchSize": self.batch_size,
                "maxBatchDelay": self.max_batch_delay_ms,
                "responseTimeout": self.response_timeout_s,
                "handler": self.handler,
            },
            sort_keys=False,
        )


def next_version(store: Path, name: str) -> str:
    existing = versions_in(store, name)
    return f"{version_key(existing[-1])[0] + 1}.0" if existing else "1.0"


def check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise PackagingError(f"model directory {model_dir} does not exist (expected a save_pretrained directory)")
    missing = [f for f in MODEL_FILES if not (model_dir / f).is_file()]
    if missing:
        raise PackagingError(f"{model_dir} lacks {', '.join(missing)} (expected a save_pretrained model + tokenizer)")
    config = json.loads((model_dir / "config.json").read_text())
    if not config.get("id2label"):
        raise PackagingError(f"{model_dir}/config.json has no id2label: the handler needs label names")


def handler_settings(serving: ServingConfig) -> Settings:
    """The handler section validated exactly as the handler will read it: a bad archive is refused here."""
    try:
        return settings_from(serving.handler)
    except ValueError as exc:
        raise PackagingError(f"bad handler settings: {exc}") from None


def carries_weights(settings: Settings, *, fp32_weights: bool) -> bool:
    """Whether the archive carries the fp32 weights: the torch engine loads them; the onnxruntime engine serves
    ``model.onnx`` alone, so they go in only when asked for (``--fp32-weights``: the CUDA path, which runs them in
    fp16). Leaving them out roughly halves an MPNet archive (docs/deployment.md, "Sizing")."""
    return settings.engine == "torch" or fp32_weights


def _stage(model_dir: Path, staging: Path, serving: ServingConfig, *, fp32_weights: bool) -> Path:
    extra = staging / "extra"
    extra.mkdir()
    settings = handler_settings(serving)
    skipped = set() if carries_weights(settings, fp32_weights=fp32_weights) else {WEIGHTS_FILE}
    for name in (*MODEL_FILES, *OPTIONAL_FILES):
        if (model_dir / name).is_file() and name not in skipped:
            shutil.copy2(model_dir / name, extra / name)
    for package_dir in HANDLER_PACKAGES:
        shutil.copytree(package_dir, extra / package_dir.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if settings.engine == "onnxruntime":
        try:
            onnx_build.build(model_dir, extra, settings)
        except ValueError as exc:  # e.g. static int8 without calibration texts
            raise PackagingError(str(exc)) from None
    config_file = staging / "model-config.yaml"
    config_file.write_text(serving.to_yaml())
    return config_file


def package(
    model_dir: Path,
    *,
    name: str,
    store: Path,
    version: str | None = None,
    serving: ServingConfig | None = None,
    fp32_weights: bool = False,
) -> Path:
    """Build ``<store>/<name>-<version>.mar``; return its path. Refuses to overwrite an existing version.
    ``fp32_weights``: carry the fp32 weights even for the onnxruntime engine (for CUDA workers)."""
    if not MODEL_NAME_RE.match(name):
        raise PackagingError(f"model name {name!r} must match {MODEL_NAME_RE.pattern}")
    store.mkdir(parents=True, exist_ok=True)
    version = version or next_version(store, name)
    if not VERSION_RE.match(version):
        raise PackagingError(f"version {version!r} must look like 1, 1.0 or 1.0.2")
    target = store / archive_name(name, version)
    if target.exists():
        raise PackagingError(f"{target} already exists: versions are immutable, pick another --version")
    check_model_dir(model_dir)
    serving = serving or ServingConfig()
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=store) as tmp:
        staging = Path(tmp)
        config_file = _stage(model_dir, staging, serving, fp32_weights=fp32_weights)
        out = staging / "out"
        out.mkdir()
        cmd = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", name,
            "--version", version,
            "--handler", str(HANDLER_FILE),
            "--extra-files", str(staging / "extra"),
            "--config-file", str(config_file),
            "--export-path", str(out),
            "--archive-format", "zip-store",  # safetensors barely deflate; storing is several seconds faster
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PackagingError(f"torch-model-archiver failed: {result.stderr.strip() or result.stdout.strip()}")
        os.replace(out / f"{name}.mar", target)
    return target


def checked_handler_section(model_dir: Path) -> dict[str, Any] | None:
    """The handler settings a training run checked for this model (``metrics.json`` beside the weights), if any: a
    model re-packaged (e.g. with a newer handler) keeps the int8 setting that passed its quality check."""
    try:
        metrics = json.loads((model_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    section = (metrics.get("packaging") or {}).get("handler") if isinstance(metrics, dict) else None
    return dict(section) if isinstance(section, dict) else None


def default_handler_section(model_dir: Path) -> dict[str, Any]:
    """For a model no training run checked: static int8 where the folder has calibration texts, else dynamic (whose
    answers depend slightly on the batch: a warning says so)."""
    section = ServingConfig().handler
    if not (model_dir / onnx_build.CALIBRATION_FILE).is_file():
        print(
            f"warning: {model_dir} has no {onnx_build.CALIBRATION_FILE}: packaging dynamic int8, whose answers move "
            "slightly with their batch companions (add a JSON list of ~256 training texts for static int8)",
            file=sys.stderr,
        )
        section = section | {"activations": "dynamic"}
    return section


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.package", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a save_pretrained directory (model+tokenizer)")
    parser.add_argument("--name", required=True, help="model name served by TorchServe, e.g. cola or sentiment")
    parser.add_argument("--version", help="archive version (default: next major version in the store)")
    parser.add_argument("--model-store", type=Path, default=default_model_store())
    defaults = ServingConfig()
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-batch-delay-ms", type=int, default=defaults.max_batch_delay_ms)
    parser.add_argument("--workers", type=int, default=defaults.min_workers, help="workers per model version")
    parser.add_argument("--response-timeout-s", type=int, default=defaults.response_timeout_s)
    parser.add_argument(
        "--fp32-weights",
        action="store_true",
        help="also carry the fp32 weights (CUDA workers run them in fp16; CPU workers serve model.onnx alone)",
    )
    args = parser.parse_args(argv)
    serving = ServingConfig(
        min_workers=args.workers,
        max_workers=args.workers,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        response_timeout_s=args.response_timeout_s,
        handler=checked_handler_section(args.model_dir) or default_handler_section(args.model_dir),
    )
    try:
        path = package(
            args.model_dir, name=args.name, store=args.model_store, version=args.version, serving=serving,
            fp32_weights=args.fp32_weights,
        )  # fmt: skip
    except PackagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"archive": str(path), "serving": asdict(serving)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
