"""Text classification for every sequence-classification model of this project, as TorchServe serves it.

The archive describes itself: ``config.json`` carries ``id2label``, the tokenizer files sit beside the weights,
and ``model-config.yaml``'s ``handler:`` section carries the settings read by :func:`settings_from`. These are the
pure functions; ``text_classifier_handler.py`` is the thin TorchServe class over them. Unit tests call them directly.

Request body (one per TorchServe request; a batch holds up to ``batchSize`` of them):
  * JSON ``{"text": "..."}`` -> one prediction object;
  * JSON ``{"texts": ["...", ...]}`` -> a list of prediction objects, in order;
  * a raw UTF-8 body with any non-JSON content type -> one prediction object.
A prediction object is ``{"label": <top label>, "probabilities": {<label>: <p>, ...}}``. A request that cannot be
read answers 400 with ``{"error": ..., "type": "invalid_input"}`` and never affects its neighbours in the batch.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from handlers.onnx_engine import ONNX_FILE, OnnxClassifier
from torchserve_protocol.limits import HANDLER_MAX_CHARS, HANDLER_MAX_TEXTS

log = logging.getLogger(__name__)

QUANTIZATION_SCHEMES = ("per_channel", "per_tensor")
ACTIVATIONS = ("static", "dynamic")
ENGINES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Settings:
    """Per-archive settings, from the ``handler:`` section of ``model-config.yaml``."""

    max_length: int = 128  # tokens kept per text; longer texts are truncated, not rejected
    engine: str = "torch"  # CPU engine: "torch" (weights quantized at load) or "onnxruntime" (the archive's model.onnx)
    num_threads: int = 1  # torch intra-op threads per worker; workers x threads should not exceed the cores
    quantize: bool = True  # int8 dynamic quantization of nn.Linear on CPU (ignored on CUDA, which uses fp16)
    quantization: str = "per_channel"  # weight observer: "per_channel" (default) or "per_tensor"
    # onnxruntime int8 activations: "static" (scales calibrated at packaging: a text's answer does not depend on its
    # batch companions) or "dynamic" (scales picked per forward from the whole batch, as the torch engine does)
    activations: str = "dynamic"
    temperature: float = 1.0  # softmax(logits / temperature): fitted on validation at training (calibration)
    keep_fp32: tuple[str, ...] = ()  # module-name prefixes left in fp32 (e.g. "classifier")
    max_texts: int = HANDLER_MAX_TEXTS  # texts per request
    max_chars: int = HANDLER_MAX_CHARS  # characters per text
    warmup: bool = True  # one forward pass at load time, so the first request is not slow


def settings_from(raw: Mapping[str, Any] | None) -> Settings:
    """Validate a ``handler:`` mapping into :class:`Settings`; unknown keys and wrong types raise ``ValueError``."""
    raw = dict(raw or {})
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"unknown handler setting(s) {unknown}; expected some of {sorted(known)}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        default = getattr(Settings, name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf")
            value = float(value) if ok else value
        elif isinstance(default, tuple):
            ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ValueError(f"handler setting {name}={value!r} has the wrong type (default is {default!r})")
        values[name] = value
    settings = Settings(**values)
    if settings.quantization not in QUANTIZATION_SCHEMES:
        raise ValueError(f"quantization must be one of {QUANTIZATION_SCHEMES}, not {settings.quantization!r}")
    if settings.engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {settings.engine!r}")
    if settings.activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, not {settings.activations!r}")
    return settings


class BadRequest(ValueError):
    """A request this handler cannot read; answered with 400 for that request only."""


@dataclass(frozen=True)
class Parsed:
    texts: list[str]
    many: bool  # the request used "texts" and gets a list back


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _check_text(value: object, where: str, settings: Settings) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise BadRequest(f"{where} is empty")
    if len(value) > settings.max_chars:
        raise BadRequest(f"{where} has {len(value)} characters; the limit is {settings.max_chars}")
    return value


def read_texts(body: object, content_type: str | None, *, settings: Settings) -> Parsed:
    """Turn one request body (as TorchServe hands it over) into texts, or raise :class:`BadRequest`."""
    if isinstance(body, bytes | bytearray):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest("the body is not valid UTF-8") from exc
    if isinstance(body, str) and _is_json(content_type):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise BadRequest("the body is not valid JSON") from exc
    elif isinstance(body, str):
        return Parsed(texts=[_check_text(body, "the text body", settings)], many=False)
    if not isinstance(body, dict):
        raise BadRequest('the JSON body must be an object: {"text": "..."} or {"texts": ["...", ...]}')
    keys = set(body)
    if keys == {"text"}:
        return Parsed(texts=[_check_text(body["text"], '"text"', settings)], many=False)
    if keys == {"texts"}:
        texts = body["texts"]
        if not isinstance(texts, list) or not texts:
            raise BadRequest('"texts" must be a non-empty list of strings')
        if len(texts) > settings.max_texts:
            raise BadRequest(f'"texts" has {len(texts)} items; the limit is {settings.max_texts}')
        return Parsed(texts=[_check_text(t, f'"texts"[{i}]', settings) for i, t in enumerate(texts)], many=True)
    raise BadRequest('the JSON body must have exactly one key, "text" or "texts"')


@dataclass
class Loaded:
    model: nn.Module | OnnxClassifier  # either is called as model(**batch).logits
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]  # index -> label name, from config.json's id2label
    device: torch.device
    temperature: float = 1.0


def labels_of(config: Any) -> list[str]:
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"id2label must map 0..N-1, got {sorted(id2label)}")
    return [id2label[i] for i in range(len(id2label))]


def quantize(model: nn.Module, *, scheme: str = "per_channel", keep_fp32: Sequence[str] = ()) -> nn.Module:
    """int8 dynamic quantization of the ``nn.Linear`` layers (weights int8, activations quantized per batch).

    The one place that knows the quantization API: a move to torchao changes only this function.
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if scheme == "per_channel" else default_dynamic_qconfig
    spec = {
        name: qconfig
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(name.startswith(p) for p in keep_fp32)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the eager-mode quantization API is deprecated in favour of torchao
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def pick_device(gpu_id: int | None) -> torch.device:
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device("cuda", gpu_id)
    return torch.device("cpu")


def load(model_dir: str | Path, *, settings: Settings, device: torch.device | None = None) -> Loaded:
    """Load tokenizer and model from a ``save_pretrained`` directory, ready for :func:`predict`.

    CUDA always runs the ``transformers`` weights in fp16. On the CPU, engine ``torch`` quantizes the weights here
    (int8 dynamic, unless ``quantize`` is off) and engine ``onnxruntime`` runs the directory's ``model.onnx``, whose
    quantization was fixed when the archive was built.
    """
    device = device or torch.device("cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.set_num_threads(settings.num_threads)
    if device.type == "cpu" and settings.engine == "onnxruntime":
        onnx = OnnxClassifier(Path(model_dir) / ONNX_FILE, num_threads=settings.num_threads)
        labels = labels_of(AutoConfig.from_pretrained(model_dir))
        return Loaded(model=onnx, tokenizer=tokenizer, labels=labels, device=device, temperature=settings.temperature)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.eval()
    if device.type == "cuda":
        model = model.half().to(device)
    elif settings.quantize:
        model = quantize(model, scheme=settings.quantization, keep_fp32=settings.keep_fp32)
    labels = labels_of(model.config)
    return Loaded(model=model, tokenizer=tokenizer, labels=labels, device=device, temperature=settings.temperature)


PADDING_SLACK = 1.25  # a forward's padded tokens may exceed its real tokens by at most this factor


def length_groups(lengths: Sequence[int], *, slack: float = PADDING_SLACK) -> list[list[int]]:
    """Indices of ``lengths`` in groups of similar length (shortest first): each group, padded to its longest member,
    carries at most ``slack`` times its real tokens. Similar sentences make one group; a batch of reviews from 5 to
    128 tokens splits instead of padding every one of them to 128."""
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and lengths[i] * (len(current) + 1) > slack * (real + lengths[i]):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    return [*groups, current] if current else groups


def _padded(
    encoded: Mapping[str, list[list[int]]], rows: list[int], *, pad_id: int, left: bool
) -> dict[str, torch.Tensor]:
    width = max(len(encoded["input_ids"][i]) for i in rows)
    tensors = {}
    for key, values in encoded.items():
        fill = pad_id if key == "input_ids" else 0  # attention_mask and token_type_ids pad with 0
        padded = [
            [fill] * (width - len(values[i])) + values[i] if left else values[i] + [fill] * (width - len(values[i]))
            for i in rows
        ]
        tensors[key] = torch.tensor(padded, dtype=torch.long)
    return tensors


def predict(loaded: Loaded, texts: Sequence[str], *, max_length: int) -> torch.Tensor:
    """Probabilities, shape ``(len(texts), n_labels)``: one tokenizer call, then one forward per group of similar
    length (:func:`length_groups`), each padded only to its own longest text; softmax at the archive's temperature."""
    tokenizer = loaded.tokenizer
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    columns = {key: encoded[key] for key in encoded if key in ("input_ids", "attention_mask", "token_type_ids")}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    probs = torch.empty(len(texts), len(loaded.labels))
    for rows in length_groups([len(ids) for ids in columns["input_ids"]]):
        batch = {
            k: v.to(loaded.device)
            for k, v in _padded(columns, rows, pad_id=pad_id, left=tokenizer.padding_side == "left").items()
        }
        with torch.inference_mode():
            logits = loaded.model(**batch).logits
        probs[rows] = torch.softmax(logits.float() / loaded.temperature, dim=-1).cpu()
    return probs


def to_response(probs: torch.Tensor, labels: Sequence[str]) -> list[dict[str, Any]]:
    """One ``{"label", "probabilities"}`` object per row of ``probs``."""
    top = probs.argmax(dim=-1).tolist()
    return [
        {"label": labels[best], "probabilities": dict(zip(labels, row, strict=True))}
        for best, row in zip(top, probs.tolist(), strict=True)
    ]


def error_body(message: str, kind: str) -> str:
    return json.dumps({"error": message, "type": kind})
