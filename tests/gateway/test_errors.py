"""Every row of the upstream error mapping, and every kind of invalid request: all answered as
``{"error", "type"}`` with the right status, never a 500 and never the client's text."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.errors import GatewayError
from gateway.settings import Settings
from tests.gateway.conftest import FakeTorchServe
from torchserve_protocol.layout import REPO

SECRET = "s3cr3t-user-text"


def raising(exc: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc("simulated", request=request)

    return fail


def answering(status: int, body: object = None, *, content: bytes | None = None) -> Callable[..., httpx.Response]:
    def fail(request: httpx.Request) -> httpx.Response:
        if content is not None:
            return httpx.Response(status, content=content)
        return httpx.Response(status, json=body)

    return fail


TS_ERROR = {"code": 0, "type": "X", "message": "TorchServe says no"}

UPSTREAM_ROWS = [
    pytest.param(raising(httpx.ReadTimeout), 504, "timeout", 1, id="read-timeout"),
    pytest.param(raising(httpx.WriteTimeout), 504, "timeout", 1, id="write-timeout"),
    pytest.param(raising(httpx.ConnectError), 503, "unavailable", 1, id="connection-refused"),
    pytest.param(raising(httpx.ConnectTimeout), 503, "unavailable", 1, id="connect-timeout"),
    pytest.param(raising(httpx.PoolTimeout), 503, "unavailable", 1, id="pool-exhausted"),
    pytest.param(raising(httpx.ReadError), 503, "unavailable", 2, id="connection-reset"),
    pytest.param(raising(httpx.RemoteProtocolError), 503, "unavailable", 2, id="closed-mid-answer"),
    pytest.param(
        answering(400, {"error": '"text" is empty', "type": "invalid_input"}), 422, "invalid_input", 1, id="handler-400"
    ),
    pytest.param(answering(413, TS_ERROR), 413, "payload_too_large", 1, id="torchserve-413"),
    pytest.param(
        answering(503, {"code": 503, "type": "ServiceUnavailableException", "message": "Model cola has no worker"}),
        503,
        "unavailable",
        1,
        id="no-worker-503",
    ),
    pytest.param(answering(404, TS_ERROR), 503, "unavailable", 1, id="model-not-registered-404"),
    pytest.param(
        answering(500, {"error": "inference failed", "type": "inference_error"}), 502, "bad_gateway", 1, id="500"
    ),
    pytest.param(answering(507, TS_ERROR), 503, "unavailable", 2, id="worker-died-507"),
    pytest.param(
        answering(500, {"code": 500, "type": "InternalServerException", "message": "Worker died."}),
        503,
        "unavailable",
        2,
        id="worker-died-500",
    ),
    pytest.param(answering(504, TS_ERROR), 504, "timeout", 1, id="torchserve-504"),
    pytest.param(answering(200, content=b"<html>"), 502, "bad_gateway", 1, id="non-json-200"),
    pytest.param(answering(200, {"label": "x", "probabilities": {"x": 1.0}}), 502, "bad_gateway", 1, id="wrong-labels"),
    pytest.param(answering(200, {"label": "acceptable"}), 502, "bad_gateway", 1, id="no-probabilities"),
    pytest.param(
        answering(200, {"label": "acceptable", "probabilities": {"acceptable": 1.5, "unacceptable": -0.5}}),
        502,
        "bad_gateway",
        1,
        id="probability-out-of-range",
    ),
]


@pytest.mark.parametrize(("fail", "status", "kind", "attempts"), UPSTREAM_ROWS)
def test_upstream_failures_are_translated(
    client: TestClient,
    upstream: FakeTorchServe,
    fail: Callable[..., httpx.Response],
    status: int,
    kind: str,
    attempts: int,
) -> None:
    upstream.fail = fail

    response = client.post("/generate", json={"passage": SECRET})

    assert (response.status_code, response.json()["type"]) == (status, kind)
    assert set(response.json()) == {"error", "type"}
    assert SECRET not in response.text
    assert ("Retry-After" in response.headers) == (status == 503)
    if status == 503:
        assert response.headers["Retry-After"] == "5"
    # one upstream call; two when the first was lost with its worker or connection (the failure is then the second's)
    assert len(upstream.predictions) == attempts


def test_the_handlers_400_message_is_passed_on(client: TestClient, upstream: FakeTorchServe) -> None:
    upstream.fail = answering(400, {"error": '"texts"[1] is empty', "type": "invalid_input"})

    response = client.post("/predict/batch", json={"texts": ["a", "b"]})

    assert response.status_code == 422
    assert response.json() == {"error": '"texts"[1] is empty', "type": "invalid_input"}


def test_an_unknown_pinned_version_is_404(client: TestClient, upstream: FakeTorchServe) -> None:
    response = client.post("/predict", json={"text": "x"}, headers={"X-Model-Version": "9.0"})

    assert response.status_code == 404
    assert response.json() == {"error": "model 'sentiment' has no version '9.0'", "type": "model_version_not_found"}


def test_a_batch_answer_of_the_wrong_length_is_502(client: TestClient, upstream: FakeTorchServe) -> None:
    upstream.fail = answering(200, [{"label": "acceptable", "probabilities": {"acceptable": 1.0, "unacceptable": 0}}])

    response = client.post("/generate/batch", json={"passages": ["a", "b"]})

    assert (response.status_code, response.json()["type"]) == (502, "bad_gateway")


def test_a_missing_key_file_is_503(client: TestClient, upstream: FakeTorchServe) -> None:
    upstream.key_file.unlink()

    response = client.post("/generate", json={"passage": "x"})

    assert (response.status_code, response.json()["type"]) == (503, "unavailable")
    assert "key file" in response.json()["error"]
    assert response.headers["Retry-After"] == "5"
    assert upstream.predictions == []


# --- the client's side: invalid requests -------------------------------------------------------------------------

LONG = "x" * 201  # settings fixture: max_text_chars=200, max_batch_items=4, max_body_bytes=4096


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        pytest.param("/generate", {"passage": ""}, "passage", id="empty"),
        pytest.param("/generate", {"passage": " \t\n\u3000 "}, "non-whitespace", id="whitespace-only"),
        pytest.param("/generate", {"passage": 3}, "valid string", id="int"),
        pytest.param("/generate", {"passage": None}, "valid string", id="null"),
        pytest.param("/generate", {"passage": [SECRET]}, "valid string", id="list"),
        pytest.param("/generate", {"passage": SECRET, "extra": 1}, "extra: Extra inputs", id="extra-field"),
        pytest.param("/generate", {"text": SECRET}, "passage: Field required", id="wrong-field-name"),
        pytest.param("/generate", {}, "passage: Field required", id="missing-field"),
        pytest.param("/generate", [SECRET], "JSON object", id="array-body"),
        pytest.param("/generate", LONG, "JSON object", id="string-body"),
        pytest.param("/generate", {"passage": SECRET + LONG}, "at most 200 characters", id="over-char-limit"),
        pytest.param("/predict", {"text": SECRET + LONG}, "at most 200 characters", id="predict-over-char-limit"),
        pytest.param("/predict", {"text": " "}, "non-whitespace", id="predict-whitespace"),
        pytest.param("/predict/batch", {"texts": []}, "at least 1 item", id="empty-batch"),
        pytest.param("/predict/batch", {"texts": ["a"] * 5}, "at most 4 items", id="over-batch-size"),
        pytest.param("/predict/batch", {"texts": ["a", " "]}, "texts.1: Value error", id="blank-item"),
        pytest.param("/generate/batch", {"passages": ["a", 1]}, "passages.1", id="wrong-item-type"),
        pytest.param("/generate/batch", {"passages": "a"}, "valid list", id="not-a-list"),
        pytest.param("/generate/batch", {"passages": [SECRET + LONG]}, "at most 200", id="batch-item-too-long"),
    ],
)
def test_invalid_bodies_are_422_without_echo(
    client: TestClient, upstream: FakeTorchServe, path: str, body: object, fragment: str
) -> None:
    response = client.post(path, json=body)

    assert response.status_code == 422
    assert response.json()["type"] == "invalid_input"
    assert fragment in response.json()["error"]
    assert SECRET not in response.text
    assert upstream.predictions == []


@pytest.mark.parametrize(
    ("content", "content_type", "fragment"),
    [
        pytest.param(b'{"passage": "x"', "application/json", "not valid JSON", id="truncated-json"),
        pytest.param(b"{'passage': 'x'}", "application/json", "not valid JSON", id="python-literal"),
        pytest.param(b"\xff\xfe", "application/json", "not valid JSON", id="not-utf8"),
        pytest.param(b'{"passage": "x"}', "text/plain", "Content-Type: application/json", id="text-plain"),
        pytest.param(b"passage=x", "application/x-www-form-urlencoded", "Content-Type", id="form"),
        pytest.param(b"", "application/json", "JSON body is required", id="empty-body"),
    ],
)
def test_unreadable_bodies_are_422(
    client: TestClient, upstream: FakeTorchServe, content: bytes, content_type: str, fragment: str
) -> None:
    response = client.post("/generate", content=content, headers={"Content-Type": content_type})

    assert response.status_code == 422
    assert response.json()["type"] == "invalid_input"
    assert fragment in response.json()["error"]
    assert upstream.predictions == []


def test_a_body_over_the_byte_limit_is_413_from_content_length(client: TestClient, upstream: FakeTorchServe) -> None:
    response = client.post("/generate", content=b'{"passage": "' + b"x" * 5000 + b'"}', headers=_json())

    assert response.status_code == 413
    assert response.json() == {"error": "the request body is over 4096 bytes", "type": "payload_too_large"}
    assert upstream.predictions == []


def test_a_streamed_body_over_the_byte_limit_is_413(client: TestClient, upstream: FakeTorchServe) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"passage": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post("/generate", content=chunks(), headers=_json())

    assert response.status_code == 413
    assert response.json()["type"] == "payload_too_large"
    assert upstream.predictions == []


def test_a_body_at_the_byte_limit_is_parsed(settings: Settings, client: TestClient) -> None:
    body = b'{"passage": "' + b"x" * 150 + b'"}'
    body += b" " * (settings.max_body_bytes - len(body))

    response = client.post("/generate", content=body, headers=_json())

    assert response.status_code == 200


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    missing = client.get("/nowhere")
    wrong = client.get("/generate")

    assert (missing.status_code, missing.json()["type"]) == (404, "not_found")
    assert (wrong.status_code, wrong.json()["type"]) == (405, "method_not_allowed")
    assert wrong.headers["Allow"] == "POST"


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def test_a_bug_in_the_gateway_is_500_internal_error(
    client: TestClient, upstream: FakeTorchServe, caplog: pytest.LogCaptureFixture
) -> None:
    """The last row of the table: an exception no boundary knows (here raised where the upstream call runs) is
    answered 500 ``internal_error`` with a fixed message and logged with its traceback."""

    def bug(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"a bug holding {SECRET}")

    upstream.fail = bug
    response = client.post("/generate", json={"passage": SECRET})
    assert (response.status_code, response.json()) == (500, {"error": "internal error", "type": "internal_error"})
    assert SECRET not in response.text
    logged = [r for r in caplog.records if r.getMessage().startswith("unhandled error on POST /generate")]
    assert len(logged) == 1
    assert logged[0].exc_info is not None


def error_table() -> str:
    return (REPO / "docs" / "gateway.md").read_text().split("## Errors", 1)[1].split("\n## ", 1)[0]


def documented_errors() -> set[tuple[int, str]]:
    """(status, type) of every row of docs/gateway.md's error table ("404 / 405" rows name two of each)."""
    rows = set()
    for line in error_table().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1][:1].isdigit():
            continue
        statuses = [int(s) for s in re.findall(r"\b\d{3}\b", cells[1])]
        kinds = re.findall(r"`([a-z_]+)`", cells[2])
        rows |= set(zip(statuses, kinds, strict=True))
    return rows


def raised_errors() -> set[tuple[int, str]]:
    """(status, type) the code can answer: the closed set of classes (uvicorn's own refusals, before the app, are
    plain text and have no type)."""
    classes, todo = set(), [GatewayError]
    while todo:
        cls = todo.pop()
        classes.add((cls.status, cls.type))
        todo.extend(cls.__subclasses__())
    return classes


def test_the_error_table_is_the_code_s() -> None:
    """Every type the gateway can answer has a row, and every row's status and type are ones the code answers."""
    documented, raised = documented_errors(), raised_errors()
    assert {kind for _, kind in documented} == {kind for _, kind in raised}
    assert documented <= raised
    assert "| `http_error` |" in error_table()  # the framework's other statuses: no fixed status to compare
