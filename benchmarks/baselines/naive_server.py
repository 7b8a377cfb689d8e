"""The naive baseline, served the way the original projects did: one uvicorn process, FastAPI, the model loaded at
start-up and called inside the endpoint, per request, on the event loop (no batching across requests).

Same weights and the same served model as TorchServe's handler, in PyTorch as the originals served it: the model is
loaded with :func:`handlers.text_classification.load` from the same ``.mar`` (a zip with ``config.json``, the weights
and the tokenizer files at its root) or from a ``save_pretrained`` directory, with the archive's own checked handler
settings (its int8 granularity, the modules it keeps fp32, its temperature) on the ``torch`` engine: PyTorch's
dynamic int8. So the baseline answers with the quality the archive was checked for, not with a cheaper, less
accurate model (every layer int8 costs MPNet's CoLA model 0.08 MCC: docs/training.md). Same contracts as the
gateway: ``/generate``, ``/predict`` and their batch forms.

    python -m benchmarks.baselines.naive_server --cola model_store/cola-1.0.mar \
        --sentiment model_store/sentiment-1.0.mar --port 8001
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import torch
import uvicorn
import yaml
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from handlers.text_classification import WEIGHTS_FILE, Loaded, Settings, load, predict, settings_from

SETTINGS = Settings()


def model_dir(source: Path, scratch: Path) -> Path:
    """A ``save_pretrained`` directory for ``source``: itself, or the ``.mar`` extracted under ``scratch``."""
    if source.is_dir():
        return source
    target = scratch / source.stem
    with zipfile.ZipFile(source) as archive:
        archive.extractall(target)
    return target


def served_in_torch(directory: Path, base: Settings) -> Settings:
    """The archive's handler settings (``model-config.yaml``; none for a bare ``save_pretrained`` directory) on the
    torch engine with ``base``'s thread count; on the archive's own engine where it carries no fp32 weights (an
    onnxruntime archive packaged for the CPU, the default since the weights left the served archives): PyTorch has
    nothing to load there, and the naive server then calls the archive's ONNX graph inside the endpoint."""
    config = directory / "model-config.yaml"
    if not config.exists():
        return base
    served = settings_from((yaml.safe_load(config.read_text()) or {}).get("handler"))
    engine = "torch" if (directory / WEIGHTS_FILE).is_file() else served.engine
    return served.model_copy(update={"engine": engine, "num_threads": base.num_threads})


class Passage(BaseModel):
    passage: str


class Passages(BaseModel):
    passages: list[str]


class Text(BaseModel):
    text: str


class Texts(BaseModel):
    texts: list[str]


def create_app(*, cola: Path | None, sentiment: Path | None, settings: Settings = SETTINGS) -> FastAPI:
    models: dict[str, Loaded] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with tempfile.TemporaryDirectory(prefix="naive-") as scratch:
            for name, source in (("cola", cola), ("sentiment", sentiment)):
                if source is not None:
                    directory = model_dir(source, Path(scratch))
                    models[name] = load(directory, settings=served_in_torch(directory, settings))
                    predict(models[name], ["warm-up"], max_length=settings.max_length)
            yield

    app = FastAPI(lifespan=lifespan)

    def model(name: str) -> Loaded:
        if name not in models:
            raise HTTPException(503, f"model {name} not loaded")
        return models[name]

    def acceptability(texts: list[str]) -> list[dict[str, float]]:
        loaded = model("cola")
        probs = predict(loaded, texts, max_length=settings.max_length)
        column = loaded.labels.index("acceptable")
        return [{"prob": float(p)} for p in probs[:, column].tolist()]

    def sentiment_of(texts: list[str]) -> list[dict[str, object]]:
        loaded = model("sentiment")
        probs = predict(loaded, texts, max_length=settings.max_length)
        results: list[dict[str, object]] = []
        for row in probs.tolist():
            by_label = dict(zip(loaded.labels, row, strict=True))
            top = max(by_label, key=by_label.__getitem__)
            results.append({"sentiment": top, "confidence": by_label[top], "probabilities": by_label})
        return results

    @app.get("/health")
    async def health() -> dict[str, object]:
        return {"status": "ok", "models": sorted(models)}

    # `async def` with the forward pass inside: the original projects' shape (one request at a time per process).
    @app.post("/generate")
    async def generate(body: Passage) -> dict[str, float]:
        return acceptability([body.passage])[0]

    @app.post("/generate/batch")
    async def generate_batch(body: Passages) -> dict[str, object]:
        return {"results": acceptability(body.passages)}

    @app.post("/predict")
    async def predict_one(body: Text) -> dict[str, object]:
        return sentiment_of([body.text])[0]

    @app.post("/predict/batch")
    async def predict_batch(body: Texts) -> dict[str, object]:
        return {"results": sentiment_of(body.texts)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="naive in-process baseline server")
    parser.add_argument("--cola", type=Path, help=".mar or save_pretrained dir of the cola model")
    parser.add_argument("--sentiment", type=Path, help=".mar or save_pretrained dir of the sentiment model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--threads", type=int, default=SETTINGS.num_threads, help="torch threads; 0: torch's default (one per core)"
    )
    args = parser.parse_args()
    # torch's default, read before `load` sets it: what a server that never sets it runs with
    settings = SETTINGS.model_copy(update={"num_threads": args.threads or torch.get_num_threads()})
    app = create_app(cola=args.cola, sentiment=args.sentiment, settings=settings)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
