"""How the gateway is served: stock uvicorn through its public API (``uvicorn.run``, ``uvicorn.Config``), with the
options below and nothing of its internals.

The connection-level bounds uvicorn has are set from the settings: the request head's size (h11's
``max_incomplete_event_size``: the h11 implementation is chosen for it, httptools has no such bound), the idle
keep-alive time and the connections or requests in progress (``limit_concurrency``). Everything else a hostile
client can try at the connection level (head deadline, connections per address, lingering close) is the edge's
(nginx, in front); request bodies are bounded by the app (:class:`gateway.middleware.BodyLimit`).
"""

from __future__ import annotations

from typing import Any

import uvicorn

from gateway.settings import Settings, load_settings


def uvicorn_options(settings: Settings | None = None) -> dict[str, Any]:
    """The uvicorn options the gateway runs with (``python -m gateway`` and the tests alike)."""
    settings = settings or load_settings()
    return {
        "loop": "uvloop",
        "http": "h11",
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_client_connections,
        "access_log": False,  # request counts and latencies are on /metrics; no per-request log lines
        "server_header": False,
        "timeout_graceful_shutdown": 10,
    }


def run(app: str, *, host: str, port: int, workers: int, log_level: str, log_config: dict[str, Any]) -> None:
    uvicorn.run(
        app, factory=True, host=host, port=port, workers=workers, log_level=log_level, log_config=log_config,
        **uvicorn_options(),
    )  # fmt: skip
