"""The gateway's endpoints. Each inference route validates its body (the request models carry the limits), sends
exactly one request to TorchServe and maps the handler's answer to the legacy contract by label name.

No ``from __future__ import annotations`` here: FastAPI reads these signatures at runtime, and the request models
are local to :func:`build_router` (they carry the configured limits).
"""

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from pydantic_core import to_json

from gateway.canary import CLIENT_KEY_HEADER, CLIENT_KEY_PATTERN, DEFAULT, VersionChooser
from gateway.catalogue import Catalogue
from gateway.errors import GatewayError, ModelVersionNotFound, Unavailable
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.model_metrics import UNKNOWN
from gateway.schemas import (
    ErrorResponse,
    GenerateBatchRequest,
    GenerateBatchResponse,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelsResponse,
    NotReadyResponse,
    PredictBatchRequest,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    ReplicaCounts,
    batch_of,
    request_models,
)
from gateway.settings import Settings
from gateway.torchserve import Prediction, TorchServeClient
from torchserve_protocol.archives import VERSION_PATTERN

MODEL_VERSION_HEADER = "X-Model-Version"
_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])

ModelVersion = Annotated[
    str | None,
    Header(
        alias=MODEL_VERSION_HEADER,
        pattern=VERSION_PATTERN,
        description="Pin a registered model version (e.g. 2.0); omitted: TorchServe's default version. The answer "
        "carries the version that served it in the same header.",
        examples=["1.0"],
    ),
]

ClientKey = Annotated[
    str | None,
    Header(
        alias=CLIENT_KEY_HEADER,
        pattern=CLIENT_KEY_PATTERN,
        description="Optional sticky canary routing: unpinned requests with the same key (e.g. a hashed user id, "
        "1-128 characters A-Z a-z 0-9 . _ : @ -) always get the same version while a canary runs.",
        examples=["user-42"],
    ),
]

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        404: "The pinned model version is not registered.",
        413: "The body is over the byte limit.",
        422: "The body is not valid: empty or whitespace-only text, wrong type, extra field, over a limit, bad JSON.",
        502: "TorchServe failed or answered something unreadable.",
        503: "TorchServe unreachable, no worker or model not registered; see Retry-After.",
        504: "TorchServe did not answer in time.",
    }.items()
}


class PrometheusText(PlainTextResponse):
    """``/metrics``' answer, documented with its real media type (not FastAPI's default JSON)."""

    media_type = CONTENT_TYPE


def _client(request: Request) -> TorchServeClient:
    client: TorchServeClient = request.state.torchserve
    return client


def _answer(body: BaseModel, prediction: Prediction) -> Response:
    """The answer, serialized once by pydantic-core: FastAPI would validate the returned model against the
    ``response_model`` again and encode it with the standard json module (the model was validated when built)."""
    headers = {MODEL_VERSION_HEADER: prediction.version} if prediction.version else None
    return Response(to_json(body), media_type="application/json", headers=headers)


async def infer(
    request: Request,
    model: str,
    payload: dict[str, Any],
    *,
    pinned: str | None,
    client_key: str | None,
    build: Callable[[Any], BaseModel],
) -> Response:
    """One inference request: the version chosen (pinned, canary share or default), sent, its answer mapped by
    ``build`` to the route's contract, and counted per version once the mapping succeeded (an answer outside the
    contract counts as that version's error). A canary version that TorchServe no longer has sends its share to the
    default instead of failing it."""
    chooser: VersionChooser = request.app.state.chooser
    metrics: Metrics = request.app.state.metrics
    choice = chooser.choose(model, pinned=pinned, client_key=client_key)
    started = time.perf_counter()
    served: str | None = choice.version if choice.role == "canary" else None  # never the client's pinned string
    try:
        try:
            prediction = await _client(request).predict(model, payload, version=choice.version)
        except ModelVersionNotFound:
            if choice.role != "canary":
                raise
            choice, served = DEFAULT, None
            prediction = await _client(request).predict(model, payload, version=None)
        served = prediction.version or UNKNOWN
        body = build(prediction.body)
    except GatewayError as exc:
        metrics.models.failed(model, served, choice.role, time.perf_counter() - started, exc.type)
        raise
    items = prediction.body if isinstance(prediction.body, list) else [prediction.body]
    metrics.models.answered(model, served, choice.role, time.perf_counter() - started, items)
    return _answer(body, prediction)


def validated_by(model: type[BaseModel]) -> Callable[[_Endpoint], _Endpoint]:
    """Let FastAPI validate ``body`` with ``model`` (the request class carrying the configured limits), while the
    signature keeps the static class of the same name for readers and mypy."""

    def annotate(endpoint: _Endpoint) -> _Endpoint:
        endpoint.__annotations__["body"] = model
        return endpoint

    return annotate


def build_router(settings: Settings) -> APIRouter:
    models = request_models(max_chars=settings.max_text_chars, max_items=settings.max_batch_items)
    router = APIRouter()

    @router.post(
        "/generate",
        tags=["cola"],
        responses=ERRORS,
        summary="P(acceptable) of one passage",
        response_model=GenerateResponse,
    )
    @validated_by(models.generate)
    async def generate(
        body: GenerateRequest,
        request: Request,
        version: ModelVersion = None,
        client_key: ClientKey = None,
    ) -> Response:
        payload = {"text": body.passage}
        return await infer(
            request, settings.generate_model, payload, pinned=version, client_key=client_key,
            build=GenerateResponse.from_prediction,
        )  # fmt: skip

    @router.post(
        "/generate/batch",
        tags=["cola"],
        responses=ERRORS,
        summary="P(acceptable) of many passages",
        response_model=GenerateBatchResponse,
    )
    @validated_by(models.generate_batch)
    async def generate_batch(
        body: GenerateBatchRequest,
        request: Request,
        version: ModelVersion = None,
        client_key: ClientKey = None,
    ) -> Response:
        passages = body.passages

        def build(answer: Any) -> GenerateBatchResponse:
            items = batch_of(answer, len(passages))
            return GenerateBatchResponse(results=[GenerateResponse.from_prediction(item) for item in items])

        return await infer(
            request, settings.generate_model, {"texts": passages}, pinned=version, client_key=client_key, build=build
        )

    @router.post(
        "/predict",
        tags=["sentiment"],
        responses=ERRORS,
        summary="Sentiment of one text",
        response_model=PredictResponse,
    )
    @validated_by(models.predict)
    async def predict(
        body: PredictRequest,
        request: Request,
        version: ModelVersion = None,
        client_key: ClientKey = None,
    ) -> Response:
        return await infer(
            request, settings.predict_model, {"text": body.text}, pinned=version, client_key=client_key,
            build=PredictResponse.from_prediction,
        )  # fmt: skip

    @router.post(
        "/predict/batch",
        tags=["sentiment"],
        responses=ERRORS,
        summary="Sentiment of many texts",
        response_model=PredictBatchResponse,
    )
    @validated_by(models.predict_batch)
    async def predict_batch(
        body: PredictBatchRequest,
        request: Request,
        version: ModelVersion = None,
        client_key: ClientKey = None,
    ) -> Response:
        texts = body.texts

        def build(answer: Any) -> PredictBatchResponse:
            items = batch_of(answer, len(texts))
            return PredictBatchResponse(results=[PredictResponse.from_prediction(item) for item in items])

        return await infer(
            request, settings.predict_model, {"texts": texts}, pinned=version, client_key=client_key, build=build
        )

    @router.get(
        "/models",
        tags=["operations"],
        summary="The model catalogue: versions, default, canary share, labels and validation metrics per model",
        response_model=ModelsResponse,
        responses={503: {"model": ErrorResponse, "description": "No model store configured, or it cannot be read."}},
    )
    async def model_catalogue(request: Request) -> Response:
        catalogue: Catalogue | None = request.app.state.catalogue
        if catalogue is None:
            raise Unavailable(
                "this gateway has no model store (GATEWAY_MODEL_STORE)", retry_after_s=settings.retry_after_s
            )
        try:
            body = await asyncio.to_thread(catalogue.read)
        except OSError:
            raise Unavailable("the model store cannot be read", retry_after_s=settings.retry_after_s) from None
        return Response(to_json(body), media_type="application/json")

    @router.get("/health", tags=["operations"], summary="The gateway process is alive (does not call TorchServe)")
    async def health() -> HealthResponse:
        return HealthResponse()

    @router.get(
        "/ready",
        tags=["operations"],
        summary="A TorchServe replica reachable with a READY worker for every model",
        responses={503: {"model": NotReadyResponse, "description": "Not ready; see Retry-After."}},
    )
    async def ready(request: Request) -> JSONResponse:
        names = (settings.generate_model, settings.predict_model)
        report = await _client(request).readiness(names)
        several = settings.replicas is not None or settings.discover_replicas  # the one-upstream body stays as it was
        replicas = ReplicaCounts(ready=report.replicas_ready, known=report.replicas) if several else None
        if report.ready:
            body = ReadyResponse(ready=True, models=report.models, replicas=replicas)
            return JSONResponse(body.model_dump(exclude_none=True))
        not_ready = [f"{name}: {detail}" for name, detail in report.models.items() if detail != "READY"]
        error = "; ".join(not_ready) or "no replica has a READY worker for every model"
        failed = NotReadyResponse(ready=False, models=report.models, replicas=replicas, error=error, type="not_ready")
        headers = Unavailable("", retry_after_s=settings.retry_after_s).headers
        return JSONResponse(failed.model_dump(exclude_none=True), status_code=503, headers=headers)

    @router.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus text: the gateway's request counts, latency and upstream retries",
        response_class=PrometheusText,
        responses={200: {"description": "Prometheus text format 0.0.4."}},
    )
    async def metrics(request: Request) -> PrometheusText:
        registry: Metrics = request.app.state.metrics
        return PrometheusText(registry.render())

    return router
