"""Build the ``model.onnx`` that the handler's ``onnxruntime`` engine serves, from a ``save_pretrained`` directory.

Two steps, both at build time so that the archive holds exactly the graph the quality check measured:
1. :func:`export_fp32`: the ``transformers`` classifier exported with dynamic batch and sequence axes;
2. :func:`quantize_int8`: ONNX Runtime's dynamic int8 quantization (int8 weights, activations quantized per batch
   at run time), per channel or per tensor, leaving in fp32 the nodes of the modules named by ``keep_fp32`` (the
   same module-name prefixes the torch engine takes, e.g. ``bert.encoder.layer.0.output.dense``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handlers.onnx_engine import ONNX_FILE
from handlers.text_classification import Settings

log = logging.getLogger(__name__)

OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def export_fp32(model_dir: Path, path: Path) -> Path:
    """Export the fp32 classifier to ``path`` (inputs as the tokenizer names them, output ``logits``)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    sample = tokenizer(["a short example", "and a slightly longer second one"], padding=True, return_tensors="pt")
    names = [name for name in INPUTS if name in sample]
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes: shapes stay dynamic
        torch.onnx.export(
            model,
            tuple(sample[name] for name in names),
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, stable node names
        )
    return path


def module_of(node_name: str) -> str:
    """``/bert/encoder/layer.0/output/dense/MatMul`` -> ``bert.encoder.layer.0.output.dense`` (the module path)."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def excluded_nodes(path: Path, keep_fp32: Sequence[str]) -> list[str]:
    """Names of the graph's nodes that belong to a module named (by prefix) in ``keep_fp32``."""
    import onnx

    if not keep_fp32:
        return []
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if any(module_of(n.name).startswith(prefix) for prefix in keep_fp32)]


def quantize_int8(src: Path, dst: Path, *, scheme: str = "per_channel", keep_fp32: Sequence[str] = ()) -> Path:
    """ONNX Runtime dynamic int8 quantization of ``src`` into ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = excluded_nodes(src, keep_fp32)
    if keep_fp32 and not excluded:
        raise ValueError(f"keep_fp32 {list(keep_fp32)} matches no node of {src.name}")
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            per_channel=scheme == "per_channel",
            nodes_to_exclude=excluded,
        )
    finally:
        root.removeFilter(_no_preprocessing_advice)
    return dst


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """ORT advises shape-inference pre-processing on every call; it is for static (calibrated) quantization."""
    return "pre-processing before quantization" not in record.getMessage()


def build(model_dir: Path, out_dir: Path, settings: Settings, *, fp32: Path | None = None) -> Path:
    """Write ``out_dir/model.onnx`` for ``settings`` (int8 when ``quantize``); ``fp32``: an export to reuse."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ONNX_FILE
    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        exported = fp32 or export_fp32(model_dir, Path(tmp) / "fp32.onnx")
        if settings.quantize:
            quantize_int8(exported, Path(tmp) / "int8.onnx", scheme=settings.quantization, keep_fp32=settings.keep_fp32)
            shutil.move(Path(tmp) / "int8.onnx", target)
        else:
            shutil.copyfile(exported, target)
    log.info("built %s (%s, %.1f MB)", target, "int8" if settings.quantize else "fp32", target.stat().st_size / 1e6)
    return target


def served_view(model_dir: Path, view: Path, settings: Settings, *, fp32: Path | None = None) -> Path:
    """A directory that looks like the extracted archive for ``settings``: ``model_dir``'s files (linked) plus,
    for the ``onnxruntime`` engine, the ``model.onnx`` built for them. What the quality check loads."""
    view.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.is_file() and item.name != ONNX_FILE and not (view / item.name).exists():
            (view / item.name).symlink_to(item.resolve())
    if settings.engine == "onnxruntime":
        build(model_dir, view, settings, fp32=fp32)
    return view
