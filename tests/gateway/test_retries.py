"""Idempotent inference is sent at most twice: once more when the first attempt was lost with its worker or its
connection, or is still unanswered after ``attempt_timeout_s`` (both then race); the client is answered by
``read_timeout_s`` whatever happens. The real app against the fake TorchServe (tests/gateway/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.metrics import RETRY_REASONS
from gateway.settings import Settings
from tests.gateway.conftest import FakeTorchServe, sample

WORKER_DIED = {"code": 507, "type": "InternalServerException", "message": "Worker died."}


@pytest.fixture
def quick(upstream: FakeTorchServe) -> Iterator[TestClient]:
    settings = Settings(key_file=upstream.key_file, attempt_timeout_s=0.3, read_timeout_s=2.0)
    with TestClient(create_app(settings, transport=httpx.MockTransport(upstream))) as client:
        yield client


def first_call_then_model(upstream: FakeTorchServe, first: object) -> None:
    """The first prediction call does ``first`` (a response, or an async callable); later calls reach the model."""
    model = FakeTorchServe.__call__
    calls = 0

    def fail(request: httpx.Request) -> object:
        nonlocal calls
        calls += 1
        if calls > 1:
            upstream.fail = None
            upstream.requests.pop()  # recorded already; the model's answer below records it again
            return model(upstream, request)
        return first(request) if callable(first) else first

    upstream.fail = fail  # type: ignore[assignment]


def retries(client: TestClient) -> dict[str, int]:
    text = client.get("/metrics").text
    return {reason: int(sample(text, "gateway_upstream_retries_total", reason=reason) or 0) for reason in RETRY_REASONS}


def test_worker_died_is_sent_once_more_and_answered(quick: TestClient, upstream: FakeTorchServe) -> None:
    first_call_then_model(upstream, httpx.Response(507, json=WORKER_DIED))

    response = quick.post("/generate", json={"passage": "again"})

    assert response.status_code == 200
    assert len(upstream.predictions) == 2
    assert retries(quick) == {"worker_died": 1, "connection_broken": 0, "no_answer": 0}


def test_an_unanswered_attempt_races_a_second_and_the_first_answer_wins(
    quick: TestClient, upstream: FakeTorchServe
) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)  # a request TorchServe lost with its worker
        raise AssertionError("cancelled long before")

    first_call_then_model(upstream, never)
    started = time.monotonic()

    response = quick.post("/predict", json={"text": "lost once"})

    assert response.status_code == 200
    assert 0.3 <= time.monotonic() - started < 1.5  # sent again at attempt_timeout_s, answered at once
    assert retries(quick)["no_answer"] == 1


def test_nothing_answered_by_the_deadline_is_504_at_the_deadline(quick: TestClient, upstream: FakeTorchServe) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        raise AssertionError("cancelled long before")

    upstream.fail = never  # type: ignore[assignment]
    started = time.monotonic()

    response = quick.post("/generate", json={"passage": "lost twice"})

    elapsed = time.monotonic() - started
    assert (response.status_code, response.json()["type"]) == (504, "timeout")
    assert 2.0 <= elapsed < 2.8  # read_timeout_s, not later
    assert len(upstream.predictions) == 2


def test_lost_twice_is_503_after_two_attempts(quick: TestClient, upstream: FakeTorchServe) -> None:
    upstream.fail = lambda request: httpx.Response(507, json=WORKER_DIED)

    response = quick.post("/predict/batch", json={"texts": ["a", "b"]})

    assert (response.status_code, response.json()["type"]) == (503, "unavailable")
    assert len(upstream.predictions) == 2
    assert retries(quick)["worker_died"] == 1
