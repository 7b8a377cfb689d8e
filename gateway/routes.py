"""The gateway's endpoints. The four inference routes are one endpoint (:func:`add_inference_route`): the body
validated by its request model (the configured limits), exactly one request to TorchServe, its typed answer mapped
to the route's legacy contract by label name.

No ``from __future__ import annotations`` here: FastAPI reads these signatures at runtime.
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from pydantic_core import to_json
from starlette.background import BackgroundTask
from starlette.datastructures import State

from gateway import worker_metrics
from gateway.answers import Classification, Prediction, UnreadableAnswer
from gateway.canary import CLIENT_KEY_HEADER, CLIENT_KEY_PATTERN, DEFAULT, VersionChooser
from gateway.catalogue import Catalogue
from gateway.errors import GatewayError, ModelVersionNotFound, Unavailable
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.model_metrics import UNKNOWN
from gateway.schemas import (
    ErrorResponse,
    GenerateBatchResponse,
    GenerateResponse,
    HealthResponse,
    ModelsResponse,
    NotReadyResponse,
    PredictBatchResponse,
    PredictResponse,
    ReadyResponse,
    ReplicaCounts,
    TextsRequest,
    generate_result,
    predict_result,
    request_models,
)
from gateway.settings import Settings
from gateway.shadow import Shadow
from gateway.torchserve import TorchServeClient
from torchserve_protocol.archives import VERSION_PATTERN

MODEL_VERSION_HEADER = "X-Model-Version"

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


async def torchserve(request: Request) -> TorchServeClient:
    """The app's one TorchServe client (the lifespan state)."""
    client: TorchServeClient = request.state.torchserve
    return client


TorchServe = Annotated[TorchServeClient, Depends(torchserve)]


@dataclass(frozen=True)
class Inference:
    """One inference route: where, which model, how its body reads and what its answer looks like."""

    path: str
    name: str  # the endpoint's name: FastAPI's operationId is made of it
    tag: str
    summary: str
    model: str
    request: type[TextsRequest]  # the body, with the configured limits
    contract: Callable[[Classification], BaseModel]
    response_model: type[BaseModel]


def _answer(body: Any, version: str | None, background: BackgroundTask | None) -> Response:
    """The answer, serialized once by pydantic-core: FastAPI would validate the returned model against the
    ``response_model`` again and encode it with the standard json module (its values were checked when read).
    ``background`` runs once the answer is sent (the shadow's copy)."""
    headers = {MODEL_VERSION_HEADER: version} if version else None
    return Response(to_json(body), media_type="application/json", headers=headers, background=background)


async def infer(
    state: State,
    client: TorchServeClient,
    route: Inference,
    texts: str | list[str],
    *,
    pinned: str | None,
    client_key: str | None,
) -> Response:
    """One inference request to ``route``'s model: the version chosen (pinned, canary share or default), ``texts``
    sent (one text, or a list answered as ``{"results": [...]}``), each text's answer mapped by the route's contract,
    and counted per version once the mapping succeeded (an answer outside the contract counts as that version's
    error). A canary version that TorchServe no longer has sends its share to the default instead of failing it.
    An unpinned request answered 200 may send a copy to the shadow version after its answer (:mod:`gateway.shadow`).
    ``state`` is the app's (its ``chooser``, ``metrics`` and ``shadow``)."""
    chooser: VersionChooser = state.chooser
    metrics: Metrics = state.metrics
    shadow: Shadow = state.shadow
    model, contract = route.model, route.contract
    choice = chooser.choose(model, pinned=pinned, client_key=client_key)
    started = time.perf_counter()
    served: str | None = choice.version if choice.role == "canary" else None  # never the client's pinned string
    prediction: Prediction
    try:
        try:
            prediction = await client.predict(model, texts, version=choice.version)
        except ModelVersionNotFound:
            if choice.role != "canary":
                raise
            choice, served = DEFAULT, None
            prediction = await client.predict(model, texts, version=None)
        served = prediction.version or UNKNOWN
        results = [contract(answer) for answer in prediction.results]
    except GatewayError as exc:
        if isinstance(exc, UnreadableAnswer):
            served = exc.version or served
        metrics.models.failed(model, served, choice.role, time.perf_counter() - started, exc.type)
        raise
    metrics.models.answered(model, served, choice.role, time.perf_counter() - started, prediction.results)
    copy = shadow.after(client, model, texts, prediction) if choice.role != "pinned" else None
    return _answer({"results": results} if isinstance(texts, list) else results[0], prediction.version, copy)


def add_inference_route(router: APIRouter, route: Inference) -> None:
    """``route``'s endpoint. Its body is typed with the request model built from the settings: FastAPI reads the
    annotation when the function is defined (a class chosen at runtime, which mypy cannot follow). Not a FastAPI
    dependency: each one costs CPU on every request (measured in docs/performance.md)."""
    Body = route.request

    async def endpoint(
        body: Body,  # type: ignore[valid-type]
        request: Request,
        client: TorchServe,
        version: ModelVersion = None,
        client_key: ClientKey = None,
    ) -> Response:
        texts = cast(TextsRequest, body).payload()
        return await infer(request.app.state, client, route, texts, pinned=version, client_key=client_key)

    router.add_api_route(
        route.path, endpoint, methods=["POST"], name=route.name, tags=[route.tag], summary=route.summary,
        response_model=route.response_model, responses=ERRORS,
    )  # fmt: skip


def inference_routes(settings: Settings) -> tuple[Inference, ...]:
    """The four inference routes, with the request models of the configured limits (built once per app)."""
    models = request_models(max_chars=settings.max_text_chars, max_items=settings.max_batch_items)
    cola, sentiment = settings.generate_model, settings.predict_model
    return (
        Inference("/generate", "generate", "cola", "P(acceptable) of one passage", cola, models.generate,
                  generate_result, GenerateResponse),
        Inference("/generate/batch", "generate_batch", "cola", "P(acceptable) of many passages", cola,
                  models.generate_batch, generate_result, GenerateBatchResponse),
        Inference("/predict", "predict", "sentiment", "Sentiment of one text", sentiment, models.predict,
                  predict_result, PredictResponse),
        Inference("/predict/batch", "predict_batch", "sentiment", "Sentiment of many texts", sentiment,
                  models.predict_batch, predict_result, PredictBatchResponse),
    )  # fmt: skip


def add_routes(router: APIRouter, settings: Settings) -> None:
    """Every endpoint, added to ``router``: the app's own router, not one included into it, because FastAPI
    matches an included router's routes through one more layer on every request (docs/performance.md, section 3b);
    the OpenAPI document is the same either way."""
    for route in inference_routes(settings):
        add_inference_route(router, route)

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
    async def ready(client: TorchServe) -> JSONResponse:
        report = await client.readiness((settings.generate_model, settings.predict_model))
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
    async def metrics(request: Request, client: TorchServe) -> PrometheusText:
        registry: Metrics = request.app.state.metrics
        key_files = sorted((r.upstream.key_file for r in client.rotation.members), key=str)
        registry.workers = worker_metrics.read_all(key_files)
        return PrometheusText(registry.render())
