"""The peer: the same models served by BentoML, an established Python serving framework with adaptive batching.

BentoML batches only the lists that one API receives, so a one-text contract (``{"passage": "..."}``) is served the
way BentoML's documentation composes services: a front service (:class:`Api`) with the naive server's contract
(``/generate``, ``/predict`` and their batch forms) calls a model service (:class:`Classifier`) in its own worker
process(es), whose batchable APIs gather the texts of concurrent requests into one call. That call is the handler's
own code (:func:`handlers.text_classification.load` and ``predict``, the archive's ``model-config.yaml`` settings:
engine ONNX Runtime int8, tokenization, length groups, temperature), so the peer runs exactly the served graph.

It needs BentoML, so it runs from its own virtualenv (``make peer``: ``.venv-peer``, ``requirements/bench-peer.txt``),
never the project's. Models come from the environment, as ``bentoml serve`` gives a service no other arguments:
``PEER_COLA`` / ``PEER_SENTIMENT`` (extracted ``.mar`` directories), ``PEER_WORKERS`` (model-service processes)::

    PEER_COLA=/tmp/cola-1.0 BENTOML_DO_NOT_TRACK=true .venv-peer/bin/bentoml serve \
        benchmarks.baselines.bentoml_service:Api --host 127.0.0.1 --port 8002
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml

from benchmarks.ceiling import served_settings

# Texts per forward at most: TorchServe's batch of 8 requests of up to 8 texts. BentoML counts texts, not requests.
MAX_BATCH_TEXTS = 64
# BentoML's dispatcher answers 503 when it predicts a request would wait longer than this: a budget (wrk's own
# 10 s timeout), not a batch window. The window is adaptive: the dispatcher learns how long a batch takes and waits
# only while waiting pays.
MAX_LATENCY_MS = 10_000
# Read at import: BentoML fixes a service's process count when the class is decorated.
WORKERS = int(os.environ.get("PEER_WORKERS", "1"))
# No access log line per request: the naive server and the stack log none either.
QUIET = {"access": {"enabled": False}}


@bentoml.service(workers=WORKERS, traffic={"timeout": 60}, logging=QUIET)
class Classifier:
    """Both models in each worker; one batchable API per model, ``{label: probability}`` per text."""

    def __init__(self) -> None:
        from handlers.text_classification import load  # torch and transformers: the worker pays, not the import

        self.models: dict[str, Any] = {}
        self.max_length: dict[str, int] = {}
        for name in ("cola", "sentiment"):
            source = os.environ.get(f"PEER_{name.upper()}")
            if source:
                settings = served_settings(Path(source))
                self.models[name] = load(source, settings=settings)
                self.max_length[name] = settings.max_length
                self._predict(name, ["warm-up"])

    def _predict(self, name: str, texts: list[str]) -> list[dict[str, float]]:
        from handlers.text_classification import predict

        if name not in self.models:
            raise bentoml.exceptions.ServiceUnavailable(f"model {name} not loaded")
        loaded = self.models[name]
        probs = predict(loaded, texts, max_length=self.max_length[name])
        return [dict(zip(loaded.labels, row, strict=True)) for row in probs.tolist()]

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_TEXTS, max_latency_ms=MAX_LATENCY_MS)
    def cola(self, texts: list[str]) -> list[dict[str, float]]:
        return self._predict("cola", texts)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_TEXTS, max_latency_ms=MAX_LATENCY_MS)
    def sentiment(self, texts: list[str]) -> list[dict[str, float]]:
        return self._predict("sentiment", texts)


def _sentiment_result(by_label: dict[str, float]) -> dict[str, Any]:
    top = max(by_label, key=by_label.__getitem__)
    return {"sentiment": top, "confidence": by_label[top], "probabilities": by_label}


@bentoml.service(workers=1, traffic={"timeout": 60}, logging=QUIET)
class Api:
    """The naive server's contract; every text goes to the model service's batchable APIs."""

    classifier = bentoml.depends(Classifier)

    async def _classify(self, model: str, texts: list[str]) -> list[dict[str, float]]:
        import aiohttp  # BentoML's client to the services it depends on

        call = getattr(self.classifier.to_async, model)
        try:
            return list(await call(texts))
        except aiohttp.ClientConnectionError:
            # BentoML 1.4.40 keeps an idle connection to a dependency for 15 s (aiohttp's default) while that
            # service's server closes it after 5 s (uvicorn's): a request sent on one closed meanwhile fails
            # (bentoml/BentoML#4971; the fix proposed upstream, #5698, also retries once). Measured here: 26 and 10
            # of ~60 requests failed in the first seconds after an idle pause. Classification is idempotent.
            return list(await call(texts))

    @bentoml.api(route="/generate")
    async def generate(self, passage: str) -> dict[str, float]:
        (row,) = await self._classify("cola", [passage])
        return {"prob": row["acceptable"]}

    @bentoml.api(route="/generate/batch")
    async def generate_batch(self, passages: list[str]) -> dict[str, Any]:
        rows = await self._classify("cola", passages)
        return {"results": [{"prob": row["acceptable"]} for row in rows]}

    @bentoml.api(route="/predict")
    async def predict(self, text: str) -> dict[str, Any]:
        (row,) = await self._classify("sentiment", [text])
        return _sentiment_result(row)

    @bentoml.api(route="/predict/batch")
    async def predict_batch(self, texts: list[str]) -> dict[str, Any]:
        rows = await self._classify("sentiment", texts)
        return {"results": [_sentiment_result(row) for row in rows]}
