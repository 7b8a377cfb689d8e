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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from handlers.onnx_engine import ONNX_FILE, OnnxClassifier
from torchserve_protocol.limits import HANDLER_MAX_CHARS, HANDLER_MAX_TEXTS

log = logging.getLogger(__name__)

Engine = Literal["torch", "onnxruntime"]
Scheme = Literal["per_channel", "per_tensor"]
Activations = Literal["static", "dynamic"]
ENGINES: tuple[str, ...] = get_args(Engine)
WEIGHTS_FILE = "model.safetensors"  # the fp32 weights: the torch engine and CUDA load them, onnxruntime does not


class Settings(BaseModel):
    """Per-archive settings, from the ``handler:`` section of ``model-config.yaml``: strict types (YAML's ``yes`` is
    not a bool here, ``1.0`` is not a count), no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    max_length: int = Field(
        default=128, gt=0, description="tokens kept per text; longer texts are truncated, not rejected"
    )
    engine: Engine = Field(
        default="torch", description='CPU engine: "torch" (weights quantized at load) or "onnxruntime" (the model.onnx)'
    )
    num_threads: int = Field(
        default=1, gt=0, description="torch intra-op threads per worker; workers x threads should not exceed the cores"
    )
    quantize: bool = Field(
        default=True, description="int8 dynamic quantization of nn.Linear on CPU (ignored on CUDA, which uses fp16)"
    )
    quantization: Scheme = Field(default="per_channel", description="weight observer: per_channel or per_tensor")
    activations: Activations = Field(
        default="dynamic",
        description="onnxruntime int8 activations: static (scales calibrated at packaging: a text's answer does not "
        "depend on its batch companions) or dynamic (scales picked per forward from the whole batch, as the torch "
        "engine does)",
    )
    temperature: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="softmax(logits / temperature): fitted on validation at training",
    )
    keep_fp32: tuple[StrictStr, ...] = Field(
        default=(), strict=False, description='module-name prefixes left in fp32 (e.g. "classifier"); YAML gives a list'
    )
    max_texts: int = Field(default=HANDLER_MAX_TEXTS, gt=0, description="texts per request")
    max_chars: int = Field(default=HANDLER_MAX_CHARS, gt=0, description="characters per text")
    warmup: bool = Field(default=True, description="one forward pass at load time, so the first request is not slow")


def settings_from(raw: Mapping[str, Any] | None) -> Settings:
    """Validate a ``handler:`` mapping into :class:`Settings`; unknown keys and wrong types or values raise
    ``ValueError`` with one line naming each bad setting."""
    try:
        return Settings.model_validate(dict(raw or {}))
    except ValidationError as exc:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}={e['input']!r}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"bad handler setting(s) {bad} (settings: {', '.join(Settings.model_fields)})") from None


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

    CUDA runs the ``transformers`` weights in fp16. On the CPU, engine ``torch`` quantizes the weights here (int8
    dynamic, unless ``quantize`` is off) and engine ``onnxruntime`` runs the directory's ``model.onnx``, whose
    quantization was fixed when the archive was built. An ``onnxruntime`` archive carries no fp32 weights unless it
    was packaged with ``--fp32-weights``: without them a CUDA worker serves ``model.onnx`` on the CPU (one warning).
    """
    device = device or torch.device("cpu")
    if device.type == "cuda" and settings.engine == "onnxruntime" and not (Path(model_dir) / WEIGHTS_FILE).is_file():
        log.warning("no %s in this archive (packaged for the CPU): serving %s on the CPU; package it with "
                    "--fp32-weights to serve it on CUDA", WEIGHTS_FILE, ONNX_FILE)  # fmt: skip
        device = torch.device("cpu")
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


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def predict(loaded: Loaded, texts: Sequence[str], *, max_length: int, slack: float = PADDING_SLACK) -> torch.Tensor:
    """Probabilities, shape ``(len(texts), n_labels)``: one tokenizer call, then one forward per group of similar
    length (:func:`length_groups`), each padded only to its own longest text; softmax at the archive's temperature.
    ``slack`` = inf pads the whole batch to its longest text in one forward (the lever benchmarks.levers measures)."""
    tokenizer = loaded.tokenizer
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    columns = {key: encoded[key] for key in encoded if key in MODEL_INPUTS}
    probs = torch.empty(len(texts), len(loaded.labels))
    for rows in length_groups([len(ids) for ids in columns["input_ids"]], slack=slack):
        # tokenizer.pad knows the pad id, the padding side and the token-type pad; it returns lists here because its
        # own tensor conversion flattens them in Python, several times slower (docs/performance.md, "Padding")
        padded = tokenizer.pad({key: [values[i] for i in rows] for key, values in columns.items()})
        batch = {key: torch.tensor(values, dtype=torch.long, device=loaded.device) for key, values in padded.items()}
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
