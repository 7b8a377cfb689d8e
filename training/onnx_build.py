"""Build the ``model.onnx`` that the handler's ``onnxruntime`` engine serves, from a ``save_pretrained`` directory.

Two steps, both at build time so that the archive holds exactly the graph the quality check measured:
1. :func:`export_fp32`: the ``transformers`` classifier exported with dynamic batch and sequence axes;
2. :func:`quantize_int8`: ONNX Runtime's dynamic int8 quantization (int8 weights, activations quantized per batch
   at run time), per channel or per tensor, leaving in fp32 the nodes of the modules named by ``keep_fp32`` (the
   same module-name prefixes the torch engine takes, e.g. ``bert.encoder.layer.0.output.dense``).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handlers.onnx_engine import ONNX_FILE
from handlers.text_classification import Settings

log = logging.getLogger(__name__)

OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CALIBRATION_FILE = "calibration.json"


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


def weight_matmuls(path: Path) -> list[str]:
    """The graph's MatMul nodes that multiply by a weight (an initializer): the Linear layers. Attention's
    activation-by-activation products stay fp32, as in the dynamic scheme."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]


def quantize_int8(
    src: Path,
    dst: Path,
    *,
    scheme: str = "per_channel",
    keep_fp32: Sequence[str] = (),
    activations: str = "dynamic",
    calibration: Sequence[str] = (),
    model_dir: Path | None = None,
    max_length: int = 128,
) -> Path:
    """ONNX Runtime int8 quantization of ``src`` into ``dst``: int8 weights; activations ``dynamic`` (scales from
    each forward's batch) or ``static`` (uint8 scales fixed from ``calibration`` texts, tokenized by ``model_dir``'s
    tokenizer and run one at a time, so padding never widens a range)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    excluded = excluded_nodes(src, keep_fp32)
    if keep_fp32 and not excluded:
        raise ValueError(f"keep_fp32 {list(keep_fp32)} matches no node of {src.name}")
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        if activations == "dynamic":
            quantize_dynamic(
                src, dst, weight_type=QuantType.QInt8, per_channel=scheme == "per_channel", nodes_to_exclude=excluded
            )
        else:
            if not calibration or model_dir is None:
                raise ValueError("static int8 needs calibration texts and the tokenizer's directory")
            quantize_static(
                src,
                dst,
                _CalibrationFeeds(model_dir, calibration, max_length),
                quant_format=QuantFormat.QDQ,
                per_channel=scheme == "per_channel",
                activation_type=QuantType.QUInt8,  # u8 x s8: the VNNI kernels
                weight_type=QuantType.QInt8,
                # only MatMul tensors are calibrated (others, e.g. the attention mask's -inf, have no range)
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=[n for n in weight_matmuls(src) if n not in set(excluded)],
                calibrate_method=CalibrationMethod.MinMax,
                # float outputs, as in the dynamic scheme: ONNX Runtime then fuses each weight product into
                # MatMulIntegerToFloat instead of re-quantizing its output to uint8 (less error, fewer nodes)
                extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"], "DedicatedQDQPair": True},
            )
    finally:
        root.removeFilter(_no_preprocessing_advice)
    return dst


class _CalibrationFeeds:
    """ONNX Runtime's calibration data reader protocol (``get_next`` until None) over texts, one text per feed."""

    def __init__(self, model_dir: Path, texts: Sequence[str], max_length: int) -> None:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        encoded = (tokenizer([text], truncation=True, max_length=max_length, return_tensors="np") for text in texts)
        self.feeds = ({k: v.astype(np.int64) for k, v in e.items() if k in INPUTS} for e in encoded)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def calibration_texts(model_dir: Path) -> list[str]:
    """The texts static int8 is calibrated on: ``calibration.json`` (a list of strings) beside the weights, written by
    the training run from its training split, so re-packaging the same model calibrates it the same way."""
    path = model_dir / CALIBRATION_FILE
    try:
        texts = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"static int8 needs {path} (a JSON list of training texts): {exc}") from None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"{path} must be a non-empty JSON list of texts")
    return texts


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
            static = settings.activations == "static"
            quantize_int8(
                exported,
                Path(tmp) / "int8.onnx",
                scheme=settings.quantization,
                keep_fp32=settings.keep_fp32,
                activations=settings.activations,
                calibration=calibration_texts(model_dir) if static else (),
                model_dir=model_dir,
                max_length=settings.max_length,
            )
            shutil.move(Path(tmp) / "int8.onnx", target)
        else:
            shutil.copyfile(exported, target)
    kind = f"int8, {settings.activations} activations" if settings.quantize else "fp32"
    log.info("built %s (%s, %.1f MB)", target, kind, target.stat().st_size / 1e6)
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
