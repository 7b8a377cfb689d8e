"""Unit tests of the handler's pure functions and of the handler class driven with TorchServe's own Context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
from ts.context import Context, RequestProcessor

from handlers.text_classification import (
    PADDING_SLACK,
    BadRequest,
    Settings,
    length_groups,
    load,
    predict,
    quantize,
    read_texts,
    settings_from,
    to_response,
)
from handlers.text_classifier_handler import TextClassifierHandler

SETTINGS = Settings(max_texts=4, max_chars=50)
JSON = "application/json"


@pytest.fixture(scope="module")
def cola(tiny_models: dict[str, Path]):
    return load(tiny_models["cola"], settings=Settings(quantize=False))


@pytest.mark.parametrize(
    ("body", "content_type", "texts", "many"),
    [
        ({"text": "i are a boy"}, None, ["i are a boy"], False),
        ({"texts": ["a", "b"]}, None, ["a", "b"], True),
        (b'{"text": "caf\xc3\xa9 \xf0\x9f\x98\x80"}', JSON, ["café 😀"], False),
        (bytearray(b'{"texts": ["x"]}'), "application/json; charset=utf-8", ["x"], True),
        ("plain words", "text/plain", ["plain words"], False),
        (b"raw bytes", None, ["raw bytes"], False),
        ('{"text": "not parsed"}', "text/plain", ['{"text": "not parsed"}'], False),
    ],
)
def test_read_texts_accepts(body: object, content_type: str | None, texts: list[str], many: bool) -> None:
    parsed = read_texts(body, content_type, settings=SETTINGS)
    assert parsed.texts == texts
    assert parsed.many is many


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"\xff\xfe", "text/plain", "not valid UTF-8"),
        (b'{"text":', JSON, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, "not valid JSON"),
        (b"[1]", JSON, "must be an object"),
        ({}, None, "exactly one key"),
        ({"text": "a", "texts": ["b"]}, None, "exactly one key"),
        ({"passage": "a"}, None, "exactly one key"),
        ({"text": ""}, None, "is empty"),
        ({"text": " \n\t"}, None, "is empty"),
        ("   ", "text/plain", "is empty"),
        ({"text": 3}, None, "must be a string"),
        ({"text": None}, None, "must be a string"),
        ({"texts": "a"}, None, "non-empty list"),
        ({"texts": []}, None, "non-empty list"),
        ({"texts": ["a", 1]}, None, '"texts"[1] must be a string'),
        ({"texts": ["a"] * 5}, None, "limit is 4"),
        ({"text": "x" * 51}, None, "limit is 50"),
    ],
)
def test_read_texts_rejects(body: object, content_type: str | None, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("[", r"\[")):
        read_texts(body, content_type, settings=SETTINGS)


def test_settings_from_validates() -> None:
    assert settings_from(None) == Settings()
    assert settings_from({"max_length": 64, "keep_fp32": ["classifier"]}).keep_fp32 == ("classifier",)
    assert settings_from({"temperature": 2}).temperature == 2.0
    with pytest.raises(ValueError, match="max_lenght=64: Extra inputs are not permitted"):
        settings_from({"max_lenght": 64})
    with pytest.raises(ValueError, match="quantize='yes': Input should be a valid boolean"):
        settings_from({"quantize": "yes"})
    with pytest.raises(ValueError, match="num_threads=0: Input should be greater than 0"):
        settings_from({"num_threads": 0})
    with pytest.raises(ValueError, match="max_texts=True: Input should be a valid integer"):
        settings_from({"max_texts": True})
    with pytest.raises(ValueError, match="temperature=inf: Input should be a finite number"):
        settings_from({"temperature": float("inf")})
    with pytest.raises(ValueError, match=r"keep_fp32\.0=1: Input should be a valid string"):
        settings_from({"keep_fp32": [1]})
    with pytest.raises(ValueError, match="quantization='fp4': Input should be 'per_channel' or 'per_tensor'"):
        settings_from({"quantization": "fp4"})


def test_predict_batches_match_single_texts(cola) -> None:
    texts = ["i are a boy", "the dog is good", "a", "great app love it " * 3]
    batched = predict(cola, texts, max_length=128)
    assert batched.shape == (4, 2)
    assert torch.allclose(batched.sum(dim=-1), torch.ones(4), atol=1e-5)
    for i, text in enumerate(texts):
        assert torch.allclose(predict(cola, [text], max_length=128)[0], batched[i], atol=1e-5)
    assert len({round(p, 4) for p in batched[:, 1].tolist()}) == 4  # the tiny model tells texts apart


@pytest.mark.parametrize(
    ("lengths", "groups"),
    [
        ([10, 11, 9, 12, 10, 11, 10, 9], [[2, 7, 0, 4, 6, 1, 5, 3]]),  # similar sentences: one forward
        ([5, 128, 6, 120, 7], [[0, 2, 4], [3, 1]]),  # short and long reviews are not padded to each other
        ([3], [[0]]),
        ([], []),
    ],
)
def test_length_groups_bound_the_padding(lengths: list[int], groups: list[list[int]]) -> None:
    got = length_groups(lengths)
    assert got == groups
    assert sorted(i for g in got for i in g) == list(range(len(lengths)))
    for g in got:
        assert max(lengths[i] for i in g) * len(g) <= PADDING_SLACK * sum(lengths[i] for i in g)


def test_grouped_forwards_match_one_padded_forward(cola) -> None:
    """Splitting a batch by length changes no fp32 probability: padding is masked either way."""
    texts = ["a", "great app love it but it crashes " * 12, "the dog", "i are a boy " * 20, "x y"]
    assert len(length_groups([len(ids) for ids in cola.tokenizer(texts)["input_ids"]])) > 1, "one group: test is void"
    batch = cola.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        one_forward = torch.softmax(cola.model(**batch).logits, dim=-1)
    assert torch.allclose(predict(cola, texts, max_length=128), one_forward, atol=1e-5)


def test_long_texts_are_truncated_not_rejected(cola) -> None:
    long_text = "the dog is good " * 500
    encoded = cola.tokenizer([long_text], padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert encoded["input_ids"].shape[1] == 16
    assert torch.allclose(
        predict(cola, [long_text], max_length=16), predict(cola, ["the dog is good " * 4], max_length=16), atol=1e-5
    )


def test_to_response_names_labels(cola) -> None:
    probs = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert to_response(probs, cola.labels) == [
        {
            "label": "acceptable",
            "probabilities": {"unacceptable": pytest.approx(0.2), "acceptable": pytest.approx(0.8)},
        },
        {
            "label": "unacceptable",
            "probabilities": {"unacceptable": pytest.approx(0.9), "acceptable": pytest.approx(0.1)},
        },
    ]


def test_int8_agrees_with_fp32(tiny_models: dict[str, Path]) -> None:
    texts = ["i are a boy", "the app crashes after the update", "love it", "one more analysis and i give up"]
    fp32 = load(tiny_models["sentiment"], settings=Settings(quantize=False))
    int8 = load(tiny_models["sentiment"], settings=Settings(quantize=True))
    assert any(isinstance(m, DynamicInt8Linear) for m in int8.model.modules())
    assert not any(isinstance(m, DynamicInt8Linear) for m in fp32.model.modules())
    p32, p8 = predict(fp32, texts, max_length=64), predict(int8, texts, max_length=64)
    assert torch.equal(p32.argmax(-1), p8.argmax(-1))
    assert (p32 - p8).abs().max().item() < 0.05


def test_quantize_keeps_named_layers_fp32(tiny_models: dict[str, Path]) -> None:
    model = load(tiny_models["cola"], settings=Settings(quantize=False)).model
    quantized = quantize(model, scheme="per_tensor", keep_fp32=("classifier",))
    assert type(quantized.classifier) is torch.nn.Linear
    assert isinstance(quantized.bert.encoder.layer[0].attention.self.query, DynamicInt8Linear)


def make_context(model_dir: Path, headers: list[dict[str, str]]) -> Context:
    manifest = {"model": {"modelName": "cola", "modelVersion": "3.0"}}
    yaml_config = {"handler": {"max_texts": 4, "max_chars": 50, "quantize": False}}
    context = Context("cola", str(model_dir), manifest, 1, None, "test", model_yaml_config=yaml_config)
    context.request_processor = [RequestProcessor(h) for h in headers]
    return context


def test_handler_answers_each_request_of_a_mixed_batch(tiny_models: dict[str, Path], cola) -> None:
    requests = [
        {"body": b'{"text": "i are a boy"}'},
        {"body": b"\xff"},
        {"body": b'{"texts": ["the dog", "a cat"]}'},
        {"body": b'{"text": ""}'},
        {"body": "the dog is good"},
        {"nothing": b""},
    ]
    headers = [{"Content-Type": JSON}, {"content-type": "text/plain"}, {"Content-Type": JSON}, {"Content-Type": JSON},
               {"Content-Type": "text/plain"}, {}]  # fmt: skip
    context = make_context(tiny_models["cola"], headers)
    handler = TextClassifierHandler()
    handler.initialize(context)
    out = handler.handle(requests, context)

    assert len(out) == len(requests)
    statuses = [context.get_response_status(i)[0] for i in range(len(requests))]
    assert statuses == [200, 400, 200, 400, 200, 400]
    for i in (1, 3, 5):
        assert set(json.loads(out[i])) == {"error", "type"}
    expected = to_response(predict(cola, ["i are a boy", "the dog", "a cat", "the dog is good"], max_length=128),
                           cola.labels)  # fmt: skip
    got = [json.loads(out[0]), *json.loads(out[2]), json.loads(out[4])]
    for g, e in zip(got, expected, strict=True):
        assert g["label"] == e["label"]
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)
    assert context.get_response_headers(0)["X-Model-Version"] == "3.0"
    assert context.get_response_content_type(1) == "application/json"
