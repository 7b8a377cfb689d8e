"""The app factory. ``uvicorn --factory gateway.app:create_app`` calls :func:`create_app` with no argument, which reads
the settings from the environment; tests pass settings and a fake upstream transport.

The lifespan owns the one :class:`httpx.AsyncClient` to TorchServe (on :class:`gateway.upstream.UpstreamTransport`,
explicit timeouts and a bounded pool) and hands the :class:`~gateway.torchserve.TorchServeClient` built on it to
requests through the lifespan state (``request.state.torchserve``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.canary import StateWatcher, VersionChooser
from gateway.catalogue import Catalogue
from gateway.errors import GatewayError, handle_error
from gateway.metrics import Metrics
from gateway.middleware import DOCS_ASSETS, BodyLimit, GatewayMiddleware
from gateway.replicas import Resolve, resolve_all
from gateway.routes import add_routes
from gateway.settings import Settings, load_settings
from gateway.shadow import Shadow
from gateway.torchserve import TorchServeClient
from gateway.upstream import UpstreamTransport

log = logging.getLogger("gateway")


def http_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The one httpx client to TorchServe: explicit timeouts, a bounded pool, no proxies from the environment;
    ``transport`` unset: :class:`gateway.upstream.UpstreamTransport` (tests: ``httpx.MockTransport``)."""
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        # no setting of its own: a body (at most 1 MB) goes to the socket's buffer at once, and the read timeout
        # bounds the whole exchange (GATEWAY_WRITE_TIMEOUT_S was documented but read by no call)
        write=settings.read_timeout_s,
        pool=settings.pool_timeout_s,
    )
    return httpx.AsyncClient(
        transport=transport or UpstreamTransport(max_connections=settings.max_connections),
        timeout=timeout,
        trust_env=False,
    )


def exact_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's document, with optional parameters documented as what they are: an optional parameter typed
    ``str | None`` comes out as ``anyOf: [string, null]``, but a header or query value is absent or a string, never
    ``null`` (schemathesis sent ``X-Model-Version: null`` as "valid" and got 422)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    for parameter in operation.get("parameters", []):
                        _drop_null(parameter)
        return app.openapi_schema or generate()

    return openapi


def _drop_null(parameter: dict[str, Any]) -> None:
    schema = parameter.get("schema", {})
    branches = [branch for branch in schema.get("anyOf", []) if branch.get("type") != "null"]
    if not parameter.get("required") and len(branches) == 1 and len(schema["anyOf"]) == 2:
        del schema["anyOf"]
        schema.update(branches[0])


def create_app(
    settings: Settings | None = None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    resolve: Resolve = resolve_all,
) -> FastAPI:
    """Build the gateway. ``transport`` replaces the network below the HTTP client (tests: ``httpx.MockTransport``);
    ``resolve`` the DNS look-up of replica discovery (tests: a fixed list of addresses)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with http_client(settings, transport) as http:
            client = TorchServeClient(settings, http, resolve=resolve, metrics=app.state.metrics)
            replicas = "discovered" if settings.discover_replicas else str(len(client.rotation.members))
            log.info(
                "gateway up: TorchServe %s (management %s, %s replica(s)), models generate=%s predict=%s, key file %s",
                settings.inference_base, settings.management_base, replicas, settings.generate_model,
                settings.predict_model, settings.key_file,
            )  # fmt: skip
            try:
                async with client.discovering():
                    yield {"torchserve": client}
            finally:
                await app.state.shadow.aclose()  # before the connections its copies use are closed

    app = FastAPIOffline(  # /docs: Swagger UI from the fastapi-offline package, served here (no CDN)
        title="Text classification gateway",
        summary="CoLA acceptability (/generate) and review sentiment (/predict), served by TorchServe.",
        version="1.0.0",
        lifespan=lifespan,
        redoc_url=None,  # one docs page, under a strict CSP (ReDoc needs inline styles and blob: workers)
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no call to the public validator
        # FastAPI's OpenTelemetry hooks asked the global providers (an os.environ read) on every request: ~6% of the
        # gateway's CPU with nothing configured. The gateway's metrics are its own (/metrics).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.openapi = exact_openapi(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.metrics = Metrics()
    watcher = StateWatcher(settings.model_store, check_s=settings.split_check_s)  # canary and shadow: one file
    app.state.chooser = VersionChooser(watcher)
    app.state.shadow = Shadow(
        watcher, app.state.metrics.shadow, timeout_s=settings.shadow_timeout_s,
        max_in_flight=min(settings.shadow_max_in_flight, max(settings.max_connections // 2, 1)),
    )  # fmt: skip
    app.state.catalogue = Catalogue(settings.model_store) if settings.model_store is not None else None
    for exc_class in (GatewayError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_class, handle_error)
    add_routes(app.router, settings)
    bodies = BodyLimit(
        max_bytes=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        max_buffered=settings.max_buffered_bytes,
        retry_after_s=settings.retry_after_s,
    )
    # metrics, request id, security headers and the body limit, in one layer (gateway/middleware.py)
    app.add_middleware(GatewayMiddleware, metrics=app.state.metrics, bodies=bodies, max_headers=settings.max_headers)
    return app
