"""TorchServe keys: read from the key file once, re-read and retried once when TorchServe rejects them, renewed
through the token API when the file's own key has expired."""

from __future__ import annotations

import json
import threading

from fastapi.testclient import TestClient

from tests.gateway.conftest import FakeTorchServe, write_keys


def test_the_key_is_read_once_and_cached(client: TestClient, upstream: FakeTorchServe) -> None:
    assert client.post("/generate", json={"passage": "x"}).status_code == 200
    upstream.key_file.write_text("not json any more")

    assert client.post("/generate", json={"passage": "x"}).status_code == 200


def test_a_rotated_key_is_re_read_and_the_request_retried_once(client: TestClient, upstream: FakeTorchServe) -> None:
    assert client.post("/generate", json={"passage": "x"}).status_code == 200
    new_key = upstream.rotate()

    response = client.post("/generate", json={"passage": "x"})

    assert response.status_code == 200
    tokens = [r.headers["Authorization"] for r in upstream.predictions]
    assert tokens == ["Bearer inf-1", "Bearer inf-1", f"Bearer {new_key}"]


def test_the_retry_waits_for_torchserve_to_rewrite_the_file(client: TestClient, upstream: FakeTorchServe) -> None:
    """TorchServe switches keys in memory before it rewrites the file: the gateway polls the file briefly."""
    assert client.post("/generate", json={"passage": "x"}).status_code == 200
    new_key = upstream.rotate(write_file=False)
    upstream.key_file.write_text("")  # TorchServe truncates, then writes
    timer = threading.Timer(0.05, write_keys, args=(upstream.key_file,), kwargs={"inference": new_key})
    timer.start()
    try:
        response = client.post("/generate", json={"passage": "x"})
    finally:
        timer.join()

    assert response.status_code == 200


def test_a_key_still_rejected_after_the_retry_is_503(client: TestClient, upstream: FakeTorchServe) -> None:
    assert client.post("/generate", json={"passage": "x"}).status_code == 200
    upstream.rotate(write_file=False)  # the file never gets the new key

    response = client.post("/generate", json={"passage": "x"})

    assert (response.status_code, response.json()["type"]) == (503, "unavailable")
    assert "rejected" in response.json()["error"]
    assert response.headers["Retry-After"] == "5"
    assert len(upstream.predictions) == 3  # the first request, then exactly one retry


def test_an_expired_key_is_renewed_with_the_api_key(client: TestClient, upstream: FakeTorchServe) -> None:
    """Keys expire after token_expiration_min; nothing else renews them, so the gateway asks TorchServe."""
    old = upstream.inference_key
    write_keys(upstream.key_file, inference=old, expires="2000-01-01T00:00:00.123456789Z")
    upstream.rotate(write_file=False)  # TorchServe no longer accepts the expired key

    response = client.post("/generate", json={"passage": "x"})

    assert response.status_code == 200
    [token_call] = [r for r in upstream.requests if r.url.path == "/token"]
    assert token_call.method == "POST"
    assert token_call.url.params["type"] == "inference"
    assert token_call.headers["Authorization"] == "Bearer api-key"
    assert json.loads(upstream.key_file.read_text())["inference"]["key"] == upstream.inference_key != old


def test_readiness_renews_an_expired_management_key(client: TestClient, upstream: FakeTorchServe) -> None:
    write_keys(upstream.key_file, inference="inf-1", management="mgmt", expires="2000-01-01T00:00:00Z")
    upstream.rotate("management", write_file=False)

    response = client.get("/ready")

    assert response.status_code == 200
    assert [r.url.params["type"] for r in upstream.requests if r.url.path == "/token"] == ["management"]
