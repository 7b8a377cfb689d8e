"""The ONNX Runtime engine of the handler: the archive's ``model.onnx`` (int8 or fp32, as built by
``training/onnx_build.py``) run by one :class:`onnxruntime.InferenceSession` on the CPU.

It is called exactly like a ``transformers`` sequence classifier (``model(**batch).logits``), so
:func:`handlers.text_classification.predict` serves both engines with the same tokenization and softmax.
Measured on MiniLM classifiers with one thread (docs/benchmarks.md): about twice PyTorch's int8 throughput at the
served batch size, and fewer labels changed against fp32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class Output:
    logits: torch.Tensor


class OnnxClassifier:
    """A sequence classifier behind an ONNX Runtime session; feeds only the inputs the graph declares."""

    def __init__(self, path: Path, *, num_threads: int) -> None:
        import onnxruntime as ort  # imported here: the torch engine never needs it

        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: an archive served with engine 'onnxruntime' must carry {ONNX_FILE} "
                "(training.package builds it)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, **batch: torch.Tensor) -> Output:
        missing = [name for name in self.inputs if name not in batch]
        if missing:
            raise ValueError(f"the tokenizer did not produce the model's input(s) {missing}")
        feed: Mapping[str, np.ndarray] = {
            name: batch[name].numpy().astype(np.int64, copy=False) for name in self.inputs
        }
        (logits,) = self.session.run(["logits"], feed)
        return Output(logits=torch.from_numpy(logits))
