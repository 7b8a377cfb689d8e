"""Shared pieces of the reliability tier: the real gateway in front of the shared TorchServe, and the error-body
check every test applies to every 4xx."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from stack.torchserve import TorchServe
from tests.edge.conftest import edge_url, local_stack  # noqa: F401 (the edge in front of a real gateway)
from tests.gateway.server import running_gateway, settings_for


def assert_error_body(response: httpx.Response) -> dict[str, str]:
    """A 4xx/5xx answer is a JSON object ``{"error": str, "type": str}`` (nothing else, nothing missing)."""
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str), body
    assert isinstance(body.get("type"), str), body
    return body


@pytest.fixture(scope="module")
def gateway_url(torchserve: TorchServe) -> Iterator[str]:
    """The real gateway (uvicorn, uvloop + httptools) in front of the shared TorchServe with the tiny models, reading
    its store (GET /models, the canary split: none here)."""
    with running_gateway(settings_for(torchserve, model_store=torchserve.model_store)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def gateway(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway_url, timeout=30) as client:
        yield client
