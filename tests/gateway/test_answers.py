"""The typed boundary: the handler's JSON read once into Classification values (gateway/answers.py), the client
returning them (TorchServeClient.predict against the fake TorchServe) and the contracts mapped from them."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.answers import Classification, UnreadableAnswer, read_answer
from gateway.errors import BadGateway
from gateway.schemas import generate_result, predict_result
from gateway.settings import Settings
from gateway.torchserve import TorchServeClient
from tests.gateway.conftest import FakeTorchServe, fake_prediction

COLA = {"label": "acceptable", "probabilities": {"unacceptable": 0.25, "acceptable": 0.75}}


def test_one_text_is_one_classification() -> None:
    answer = json.dumps({**COLA, "extra": "ignored"}).encode()

    assert read_answer(answer, model="cola", texts=None, version="1.0") == [
        Classification(label="acceptable", probabilities={"unacceptable": 0.25, "acceptable": 0.75})
    ]


def test_a_batch_is_read_in_order_and_integers_are_probabilities() -> None:
    other = {"label": "unacceptable", "probabilities": {"unacceptable": 1, "acceptable": 0}}

    results = read_answer(json.dumps([COLA, other]).encode(), model="cola", texts=2, version=None)

    assert [r.label for r in results] == ["acceptable", "unacceptable"]
    assert results[1].probabilities == {"unacceptable": 1.0, "acceptable": 0.0}


@pytest.mark.parametrize(
    ("content", "texts", "expected"),
    [
        pytest.param(b"<html>", None, "non-JSON for model 'cola'", id="not-json"),
        pytest.param(json.dumps([COLA]).encode(), None, "outside the handler's contract", id="list-for-one-text"),
        pytest.param(json.dumps(COLA).encode(), 1, "outside the handler's contract", id="object-for-a-batch"),
        pytest.param(json.dumps([COLA]).encode(), 2, "wrong shape (expected 2 results)", id="short-batch"),
        pytest.param(json.dumps([COLA] * 3).encode(), 2, "wrong shape (expected 2 results)", id="long-batch"),
        pytest.param(b'{"label": "acceptable"}', None, "probabilities: Field required", id="no-probabilities"),
        pytest.param(b'{"probabilities": {"a": 0.5}}', None, "label: Field required", id="no-label"),
        pytest.param(b'{"label": 1, "probabilities": {}}', None, "label: Input should be a valid string", id="label"),
        pytest.param(b'{"label": "a", "probabilities": {"a": "0.5"}}', None, "probabilities.a", id="string-prob"),
        pytest.param(b'{"label": "a", "probabilities": {"a": true}}', None, "probabilities.a", id="boolean-prob"),
        pytest.param(b'{"label": "a", "probabilities": {"a": 1.5}}', None, "less than or equal to 1", id="over-1"),
        pytest.param(b'{"label": "a", "probabilities": {"a": -0.1}}', None, "greater than or equal to 0", id="neg"),
        pytest.param(b'{"label": "a", "probabilities": [0.5]}', None, "probabilities", id="probabilities-list"),
    ],
)
def test_anything_else_is_an_unreadable_answer_of_the_version_that_sent_it(
    content: bytes, texts: int | None, expected: str
) -> None:
    with pytest.raises(UnreadableAnswer) as caught:
        read_answer(content, model="cola", texts=texts, version="2.0")

    assert expected in caught.value.message
    assert (caught.value.status, caught.value.type, caught.value.version) == (502, "bad_gateway", "2.0")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_client_returns_typed_results_and_the_version_that_answered(upstream: FakeTorchServe) -> None:
    settings = Settings(key_file=upstream.key_file)
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        client = TorchServeClient(settings, http)
        one = await client.predict("cola", "I are a boy")
        many = await client.predict("sentiment", ["good", "bad app"], version="1.0")

    expected = fake_prediction("cola", "I are a boy")
    assert one.results == [Classification(label=expected["label"], probabilities=expected["probabilities"])]
    assert one.version == "1.0"  # TorchServe's X-Model-Version: the default version
    assert [r.label for r in many.results] == [fake_prediction("sentiment", t)["label"] for t in ("good", "bad app")]
    assert [json.loads(r.content) for r in upstream.predictions] == [
        {"text": "I are a boy"},
        {"texts": ["good", "bad app"]},
    ]


def test_the_contracts_map_by_label_name() -> None:
    sentiment = Classification(label="neutral", probabilities={"positive": 0.2, "neutral": 0.5, "negative": 0.3})

    assert generate_result(Classification(**COLA)).model_dump() == {"prob": 0.75}
    assert predict_result(sentiment).model_dump() == {
        "sentiment": "neutral",
        "confidence": 0.5,
        "probabilities": {"negative": 0.3, "neutral": 0.5, "positive": 0.2},
    }


@pytest.mark.parametrize(
    ("contract", "answer", "expected"),
    [
        (generate_result, Classification(label="x", probabilities={"x": 1.0}), "'acceptable' label is missing"),
        (predict_result, Classification(label="positive", probabilities={"positive": 1.0}), "labels are not"),
        (
            predict_result,
            Classification(label="meh", probabilities={"negative": 0.1, "neutral": 0.1, "positive": 0.8}),
            "unknown label",
        ),
    ],
)
def test_an_answer_outside_a_contract_is_a_bad_gateway(contract: object, answer: Classification, expected: str) -> None:
    with pytest.raises(BadGateway, match=expected):
        contract(answer)  # type: ignore[operator]
