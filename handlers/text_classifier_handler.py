"""The TorchServe entry point: exactly one class (TorchServe's loader requires it), a thin adapter over
:mod:`handlers.text_classification`. Inside a ``.mar`` the ``handlers`` package travels beside this file."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import transformers

from handlers.text_classification import (
    BadRequest,
    Loaded,
    Parsed,
    Settings,
    error_body,
    load,
    pick_device,
    predict,
    read_texts,
    settings_from,
    to_response,
)

log = logging.getLogger(__name__)
REQUEST_ID = "X-Request-ID"  # set by the gateway on every request it forwards


def _header(context: Any, idx: int, name: str) -> str | None:
    headers = context.get_all_request_header(idx) or {}
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
    return None


def _body(request: Mapping[str, Any]) -> object:
    for key in ("body", "data"):
        if key in request:
            return request[key]
    if "text" in request or "texts" in request:  # form fields or query parameters
        return {k: v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else v for k, v in request.items()}
    raise BadRequest('send a JSON body {"text": "..."} or a text/plain body')


class TextClassifierHandler:
    """TorchServe entry point: ``initialize`` once per worker, ``handle`` once per batch."""

    def __init__(self) -> None:
        self.loaded: Loaded | None = None
        self.settings = Settings()
        self.headers: dict[str, str] = {}
        self.initialized = False

    def initialize(self, context: Any) -> None:
        started = time.perf_counter()
        transformers.utils.logging.disable_progress_bar()  # progress bars in a worker's log are noise
        properties = context.system_properties
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.settings = settings_from(yaml_config.get("handler"))
        device = pick_device(properties.get("gpu_id"))
        self.loaded = load(properties["model_dir"], settings=self.settings, device=device)
        model_info = (getattr(context, "manifest", None) or {}).get("model", {})
        self.headers = {
            "X-Model-Name": str(model_info.get("modelName", context.model_name)),
            "X-Model-Version": str(model_info.get("modelVersion", "")),
        }
        if self.settings.warmup:
            predict(self.loaded, ["warm-up"], max_length=self.settings.max_length)
        self.initialized = True
        log.info(
            "loaded %s version %s on %s (engine=%s, quantize=%s/%s, threads=%d) in %.1fs",
            self.headers["X-Model-Name"], self.headers["X-Model-Version"], self.loaded.device, self.settings.engine,
            self.settings.quantize and self.loaded.device.type == "cpu", self.settings.quantization,
            self.settings.num_threads, time.perf_counter() - started,
        )  # fmt: skip

    def handle(self, data: list[Mapping[str, Any]], context: Any) -> list[str]:
        assert self.loaded is not None, "handle() before initialize()"
        responses: list[str] = [""] * len(data)
        parsed: dict[int, Parsed] = {}
        for idx, request in enumerate(data):
            for key, value in self.headers.items():
                context.set_response_header(idx, key, value)
            context.set_response_header(idx, "X-Batch-Size", str(len(data)))  # requests answered by this forward
            context.set_response_content_type(idx, "application/json")
            try:
                parsed[idx] = read_texts(_body(request), _header(context, idx, "Content-Type"), settings=self.settings)
            except BadRequest as exc:
                context.set_response_status(400, "Bad Request", idx=idx)
                responses[idx] = error_body(str(exc), "invalid_input")
                # the gateway's X-Request-ID follows one failed request across both processes; never the text
                log.warning("request %s answered 400: %s", _header(context, idx, REQUEST_ID) or "-", exc)
        texts = [text for p in parsed.values() for text in p.texts]
        if not texts:
            return responses
        try:
            rows = to_response(predict(self.loaded, texts, max_length=self.settings.max_length), self.loaded.labels)
        except Exception:
            ids = ",".join(_header(context, idx, REQUEST_ID) or "-" for idx in parsed)
            log.exception("inference failed for a batch of %d texts (requests %s)", len(texts), ids)
            for idx in parsed:
                context.set_response_status(500, "Internal Server Error", idx=idx)
                responses[idx] = error_body("inference failed", "inference_error")
            return responses
        start = 0
        for idx, p in parsed.items():
            chunk = rows[start : start + len(p.texts)]
            start += len(p.texts)
            responses[idx] = json.dumps(chunk if p.many else chunk[0])
        return responses
