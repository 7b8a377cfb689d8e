"""Request and response contracts. The legacy field names never change: ``passage``/``prob`` (/generate) and
``text``/``sentiment``/``confidence``/``probabilities`` (/predict).

Request models carry the configured limits (characters per text, items per batch), so they are built once per app
by :func:`request_models`; the OpenAPI schema at ``/docs`` then shows the limits actually enforced. Responses are
mapped from the handler's typed answer (:class:`~gateway.answers.Classification`) by label *name* (``id2label``
travels in the archive), never by index.
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.answers import Classification
from gateway.errors import BadGateway

ACCEPTABLE = "acceptable"  # the cola label whose probability is /generate's "prob"
SENTIMENTS = ("negative", "neutral", "positive")
Sentiment = Literal["negative", "neutral", "positive"]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]

PASSAGE = "I are a boy"
REVIEW = "This app is great, I use it every day"


# Somewhere a character that is not whitespace as Python's str.strip() sees it, spelled out code point by code point
# (regex dialects disagree on \s: ECMA's includes U+FEFF, Python's U+001C-U+001F). JSON Schema patterns search.
NOT_BLANK = "[^\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateResponse(BaseModel):
    prob: Probability = Field(description='P(label "acceptable") from the CoLA model.', examples=[0.0873])


class Probabilities(BaseModel):
    negative: Probability
    neutral: Probability
    positive: Probability


class PredictResponse(BaseModel):
    sentiment: Sentiment = Field(description="The most probable label.", examples=["positive"])
    confidence: Probability = Field(description="probabilities[sentiment].", examples=[0.91])
    probabilities: Probabilities = Field(
        description="One probability per label, by name.",
        examples=[{"negative": 0.03, "neutral": 0.06, "positive": 0.91}],
    )


class GenerateBatchResponse(BaseModel):
    results: list[GenerateResponse] = Field(description="One result per passage, in order.")


class PredictBatchResponse(BaseModel):
    results: list[PredictResponse] = Field(description="One result per text, in order.")


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong; never repeats the client's text.", examples=["text: too long"])
    type: str = Field(
        description="Stable machine-readable kind: invalid_input, payload_too_large, request_timeout, not_found, "
        "model_version_not_found, method_not_allowed, bad_gateway, unavailable, timeout, internal_error.",
        examples=["invalid_input"],
    )


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReplicaCounts(BaseModel):
    ready: int = Field(description="TorchServe replicas with a READY worker for every model.", examples=[2])
    known: int = Field(description="TorchServe replicas the gateway knows of (given or discovered).", examples=[2])


class ReadyResponse(BaseModel):
    ready: bool
    models: dict[str, str] = Field(
        description='Per model: "READY" (on at least one replica) or why not.', examples=[{"cola": "READY"}]
    )
    replicas: ReplicaCounts | None = Field(
        default=None,
        description="Only when the gateway is configured for several replicas (given or discovered).",
    )


class NotReadyResponse(ErrorResponse, ReadyResponse):
    pass


def _text_doc(max_chars: int) -> str:
    return f"1 to {max_chars} characters, not only whitespace; text beyond the model's 128 tokens is truncated."


def _batch_doc(max_chars: int, max_items: int) -> str:
    return f"1 to {max_items} items in one TorchServe request, answered in order; each " + _text_doc(max_chars)


class TextsRequest(_Strict):
    """An inference request body: the text or texts it carries go to TorchServe as they are."""

    def payload(self) -> str | list[str]:
        raise NotImplementedError


class RequestModels(NamedTuple):
    generate: type[TextsRequest]
    generate_batch: type[TextsRequest]
    predict: type[TextsRequest]
    predict_batch: type[TextsRequest]


def request_models(*, max_chars: int, max_items: int) -> RequestModels:
    """The four request bodies, built once per app from the configured limits (settings bound them by the handler's),
    so that what FastAPI validates and what /openapi.json shows are the same limits."""
    # The pattern documents what _not_blank checks (a character that is not whitespace); _not_blank stays the check.
    Text = Annotated[
        str,
        Field(min_length=1, max_length=max_chars, json_schema_extra={"pattern": NOT_BLANK}),
        AfterValidator(_not_blank),
    ]
    one, many = _text_doc(max_chars), _batch_doc(max_chars, max_items)

    class GenerateRequest(TextsRequest):
        model_config = ConfigDict(json_schema_extra={"examples": [{"passage": PASSAGE}]})
        passage: Text = Field(description=one)

        def payload(self) -> str:
            return self.passage

    class GenerateBatchRequest(TextsRequest):
        model_config = ConfigDict(json_schema_extra={"examples": [{"passages": [PASSAGE, "I am a boy"]}]})
        passages: list[Text] = Field(min_length=1, max_length=max_items, description=many)

        def payload(self) -> list[str]:
            return self.passages

    class PredictRequest(TextsRequest):
        model_config = ConfigDict(json_schema_extra={"examples": [{"text": REVIEW}]})
        text: Text = Field(description=one)

        def payload(self) -> str:
            return self.text

    class PredictBatchRequest(TextsRequest):
        model_config = ConfigDict(json_schema_extra={"examples": [{"texts": [REVIEW, "It crashes after the update"]}]})
        texts: list[Text] = Field(min_length=1, max_length=max_items, description=many)

        def payload(self) -> list[str]:
            return self.texts

    return RequestModels(GenerateRequest, GenerateBatchRequest, PredictRequest, PredictBatchRequest)


# The contracts' answers for one text. The answer's values were checked when it was read (gateway.answers: numbers
# within [0, 1]); what is left to check is the contract's labels, so the models are built without validating again.
def generate_result(answer: Classification) -> GenerateResponse:
    prob = answer.probabilities.get(ACCEPTABLE)
    if prob is None:
        raise BadGateway(f"the {ACCEPTABLE!r} label is missing from the model's answer (check its id2label)")
    return GenerateResponse.model_construct(prob=prob)


def predict_result(answer: Classification) -> PredictResponse:
    probs = answer.probabilities
    if not all(label in probs for label in SENTIMENTS):
        raise BadGateway(f"the sentiment model's labels are not {SENTIMENTS} (check its id2label)")
    if answer.label not in SENTIMENTS:
        raise BadGateway(f"the sentiment model answered an unknown label (expected one of {SENTIMENTS})")
    by_name = Probabilities.model_construct(
        negative=probs["negative"], neutral=probs["neutral"], positive=probs["positive"]
    )
    return PredictResponse.model_construct(
        sentiment=answer.label, confidence=probs[answer.label], probabilities=by_name
    )


class VersionInfo(BaseModel):
    version: str = Field(examples=["2.0"])
    labels: list[str] | None = Field(
        description="The model's label names (id2label of the archive's config.json), in id order; null when the "
        "archive cannot be read.",
        examples=[["unacceptable", "acceptable"]],
    )
    validation: dict[str, float] | None = Field(
        description="The best epoch's validation metrics from the archive's metrics.json (the model card's numbers); "
        "null for an archive built without a training run.",
        examples=[{"mcc": 0.268, "accuracy": 0.72}],
    )


class ModelInfo(BaseModel):
    name: str = Field(examples=["cola"])
    default: str = Field(description="The default version (the store's served.json).", examples=["1.0"])
    canary: str | None = Field(description="The canary version, if any.", examples=["2.0"])
    canary_percent: float = Field(
        description="Share of unpinned requests sent to the canary (0 without one).", examples=[10.0]
    )
    shadow: str | None = Field(
        description="The shadow version, if any: it gets copies of unpinned requests, its answers discarded.",
        examples=[None],
    )
    shadow_percent: float = Field(
        description="Share of unpinned requests copied to the shadow (0 without one).", examples=[0.0]
    )
    versions: list[VersionInfo]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
