"""/health, /ready, /metrics, security headers, OpenAPI and settings."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.metrics import CONTENT_TYPE
from gateway.settings import Settings, SettingsError, load_settings
from tests.gateway.conftest import FakeTorchServe, sample
from torchserve_protocol.layout import REPO


def test_health_does_not_call_torchserve(client: TestClient, upstream: FakeTorchServe) -> None:
    response = client.get("/health")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert upstream.requests == []


def test_ready_when_every_model_has_a_ready_worker(client: TestClient, upstream: FakeTorchServe) -> None:
    response = client.get("/ready")

    assert response.status_code == 200
    assert response.json() == {"ready": True, "models": {"cola": "READY", "sentiment": "READY"}}
    assert sorted(r.url.path for r in upstream.requests) == ["/models/cola", "/models/sentiment"]
    assert all(r.headers["Authorization"] == "Bearer mgmt" for r in upstream.requests)


def test_not_ready_without_a_ready_worker(client: TestClient, upstream: FakeTorchServe) -> None:
    upstream.ready["sentiment"] = False

    response = client.get("/ready")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    body = response.json()
    assert body["ready"] is False
    assert body["type"] == "not_ready"
    assert body["models"]["cola"] == "READY"
    assert "sentiment: no READY worker" in body["error"]


def test_not_ready_when_a_model_is_not_registered(client: TestClient, upstream: FakeTorchServe) -> None:
    del upstream.versions["cola"]

    response = client.get("/ready")

    assert response.status_code == 503
    assert "not registered" in response.json()["models"]["cola"]


def test_not_ready_when_torchserve_is_unreachable(settings: Settings) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with TestClient(create_app(settings, transport=httpx.MockTransport(refuse))) as client:
        response = client.get("/ready")

    assert response.status_code == 503
    assert set(response.json()["models"]) == {"cola", "sentiment"}


def test_metrics_count_requests_per_route_and_status(client: TestClient) -> None:
    client.post("/generate", json={"passage": "x"})
    client.post("/generate", json={"passage": "x"})
    client.post("/generate", json={"passage": ""})
    client.get("/no/such/path/123")

    text = client.get("/metrics").text

    ok = {"method": "POST", "route": "/generate", "status": "200"}
    assert sample(text, "gateway_requests_total", **ok) == 2
    assert sample(text, "gateway_requests_total", method="POST", route="/generate", status="422") == 1
    assert sample(text, "gateway_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert sample(text, "gateway_request_duration_seconds_bucket", **ok, le="+Inf") == 2
    assert sample(text, "gateway_request_duration_seconds_count", **ok) == 2
    assert "/no/such/path" not in text
    assert client.get("/metrics").headers["Content-Type"].startswith("text/plain; version=0.0.4")


@pytest.mark.parametrize(("method", "path"), [("GET", "/health"), ("POST", "/generate"), ("GET", "/nowhere")])
def test_security_headers_on_every_answer(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, json={"passage": ""})

    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_docs_render_and_document_every_endpoint(client: TestClient) -> None:
    docs = client.get("/docs")
    spec = client.get("/openapi.json").json()

    assert docs.status_code == 200
    csp = docs.headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'none'; script-src 'self' 'sha256-")  # its own assets and inline script only
    assert "https:" not in csp
    assert "unsafe" not in csp
    assert "cdn" not in docs.text
    assert "https://" not in docs.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        answer = client.get(f"/docs/assets/{asset}")
        assert answer.status_code == 200, asset
        assert len(answer.content) > 1_000
    assert client.get("/redoc").status_code == 404
    paths = {"/generate", "/generate/batch", "/predict", "/predict/batch", "/health", "/ready", "/metrics", "/models"}
    assert set(spec["paths"]) == paths
    schemas = spec["components"]["schemas"]
    assert schemas["GenerateRequest"]["examples"] == [{"passage": "I are a boy"}]
    assert schemas["GenerateRequest"]["properties"]["passage"]["maxLength"] == 200  # the configured limit
    assert schemas["PredictBatchRequest"]["properties"]["texts"]["maxItems"] == 4
    assert schemas["GenerateRequest"]["additionalProperties"] is False
    params = spec["paths"]["/predict"]["post"]["parameters"]
    assert [p["name"] for p in params] == ["X-Model-Version", "X-Client-Key"]
    assert {"404", "413", "422", "502", "503", "504"} <= set(spec["paths"]["/generate"]["post"]["responses"])
    version = params[0]["schema"]
    assert (version["type"], "anyOf" in version, params[0]["required"]) == ("string", False, False)  # never null
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [CONTENT_TYPE]
    assert client.get("/metrics").headers["content-type"] == CONTENT_TYPE


def test_settings_come_from_gateway_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_INFERENCE_URL", "http://10.0.0.5:9080/")
    monkeypatch.setenv("GATEWAY_KEY_FILE", "run/other/key_file.json")
    monkeypatch.setenv("GATEWAY_MAX_BATCH_ITEMS", "8")

    settings = load_settings()

    assert settings.inference_base == "http://10.0.0.5:9080"
    assert settings.key_file == REPO / "run" / "other" / "key_file.json"
    assert settings.max_batch_items == 8
    assert create_app().state.settings == settings


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("GATEWAY_MAX_TEXT_CHARS", "30000", "less than or equal to 20000"),
        ("GATEWAY_MAX_BATCH_ITEMS", "0", "greater than or equal to 1"),
        ("GATEWAY_MAX_BODY_BYTES", "2000000", "less than or equal to 1048576"),
        ("GATEWAY_READ_TIMEOUT_S", "soon", "valid number"),
        ("GATEWAY_INFERENCE_URL", "localhost", "valid URL"),
        ("GATEWAY_GENERATE_MODEL", "../cola", "should match pattern"),
        ("GATEWAY_RENEW_EXPIRED_KEYS", "maybe", "valid boolean"),
        ("GATEWAY_MAX_HEADER_BYTES", "100", "greater than or equal to 1024"),
        ("GATEWAY_MAX_CLIENT_CONNECTIONS", "0", "greater than or equal to 1"),
    ],
)
def test_bad_settings_fail_at_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError, match=name) as raised:
        create_app()

    assert fragment in str(raised.value)


def test_the_two_models_must_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PREDICT_MODEL", "cola")

    with pytest.raises(SettingsError, match="different models"):
        load_settings()


def test_the_buffered_bytes_cap_holds_at_least_one_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MAX_BUFFERED_BYTES", "50000")

    with pytest.raises(SettingsError, match="max_buffered_bytes must be >= max_body_bytes"):
        load_settings()
