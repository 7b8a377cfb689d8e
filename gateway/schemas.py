"""Request and response contracts. The legacy field names never change: ``passage``/``prob`` (/generate) and
``text``/``sentiment``/``confidence``/``probabilities`` (/predict).

Request models carry the configured limits (characters per text, items per batch), so they are built per app by
:func:`request_models`; the OpenAPI schema at ``/docs`` then shows the limits actually enforced. Responses are
built from the handler's answer by label *name* (``id2label`` travels in the archive), never by index.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from gateway.errors import BadGateway
from torchserve_protocol.limits import HANDLER_MAX_CHARS, HANDLER_MAX_TEXTS

ACCEPTABLE = "acceptable"  # the cola label whose probability is /generate's "prob"
SENTIMENTS = ("negative", "neutral", "positive")
Sentiment = Literal["negative", "neutral", "positive"]

_Model = TypeVar("_Model", bound=BaseModel)
_Request = TypeVar("_Request", bound="_Strict")

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

    @classmethod
    def from_prediction(cls, prediction: object) -> GenerateResponse:
        probs = _probabilities(prediction)
        if ACCEPTABLE not in probs:
            raise BadGateway(f"the {ACCEPTABLE!r} label is missing from the model's answer (check its id2label)")
        return _build(cls, prob=probs[ACCEPTABLE])


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

    @classmethod
    def from_prediction(cls, prediction: object) -> PredictResponse:
        probs = _probabilities(prediction)
        if not all(label in probs for label in SENTIMENTS):
            raise BadGateway(f"the sentiment model's labels are not {SENTIMENTS} (check its id2label)")
        label = prediction.get("label") if isinstance(prediction, Mapping) else None
        if label not in SENTIMENTS:
            raise BadGateway(f"the sentiment model answered an unknown label (expected one of {SENTIMENTS})")
        return _build(
            cls,
            sentiment=label,
            confidence=probs[label],
            probabilities={name: probs[name] for name in SENTIMENTS},
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


def text_type(max_chars: int) -> Any:
    """A text field: 1..max_chars characters and not only whitespace (what counts is sent unchanged)."""
    # The pattern documents what _not_blank checks (a character that is not whitespace); _not_blank stays the check.
    return Annotated[
        str,
        Field(min_length=1, max_length=max_chars, json_schema_extra={"pattern": NOT_BLANK}),
        AfterValidator(_not_blank),
    ]


def texts_type(max_chars: int, max_items: int) -> Any:
    return Annotated[list[text_type(max_chars)], Field(min_length=1, max_length=max_items)]  # type: ignore[misc]


def _text_doc(max_chars: int) -> str:
    return f"1 to {max_chars} characters, not only whitespace; text beyond the model's 128 tokens is truncated."


def _batch_doc(max_chars: int, max_items: int) -> str:
    return f"1 to {max_items} items in one TorchServe request, answered in order; each " + _text_doc(max_chars)


# The request bodies, bounded here by the handler's own ceilings. The app validates with the subclasses that
# request_models() builds from the configured (tighter) limits; these static classes give code and mypy the fields.
class GenerateRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"passage": PASSAGE}]})
    passage: str = Field(max_length=HANDLER_MAX_CHARS, description="The sentence to judge.")


class GenerateBatchRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"passages": [PASSAGE, "I am a boy"]}]})
    passages: list[str] = Field(max_length=HANDLER_MAX_TEXTS, description="The sentences to judge.")


class PredictRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": REVIEW}]})
    text: str = Field(max_length=HANDLER_MAX_CHARS, description="The review to classify.")


class PredictBatchRequest(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": [REVIEW, "It crashes after the update"]}]})
    texts: list[str] = Field(max_length=HANDLER_MAX_TEXTS, description="The reviews to classify.")


class RequestModels(NamedTuple):
    generate: type[GenerateRequest]
    generate_batch: type[GenerateBatchRequest]
    predict: type[PredictRequest]
    predict_batch: type[PredictBatchRequest]


@lru_cache(maxsize=8)
def request_models(*, max_chars: int, max_items: int) -> RequestModels:
    """The request bodies with the configured limits (same names and fields; OpenAPI shows these limits)."""
    one = (text_type(max_chars), Field(description=_text_doc(max_chars)))
    many = (texts_type(max_chars, max_items), Field(description=_batch_doc(max_chars, max_items)))

    def narrow(base: type[_Request], field: str, spec: tuple[Any, Any]) -> type[_Request]:
        fields: dict[str, Any] = {field: spec}
        return create_model(base.__name__, __base__=base, __module__=__name__, **fields)

    return RequestModels(
        generate=narrow(GenerateRequest, "passage", one),
        generate_batch=narrow(GenerateBatchRequest, "passages", many),
        predict=narrow(PredictRequest, "text", one),
        predict_batch=narrow(PredictBatchRequest, "texts", many),
    )


def batch_of(prediction: object, expected: int) -> list[Any]:
    """The handler's list answer for a ``{"texts": [...]}`` request, checked to hold one item per text."""
    if not isinstance(prediction, list) or len(prediction) != expected:
        raise BadGateway(f"TorchServe answered a batch of the wrong shape (expected {expected} results)")
    return prediction


def _probabilities(prediction: object) -> Mapping[str, float]:
    probs = prediction.get("probabilities") if isinstance(prediction, Mapping) else None
    if not isinstance(probs, Mapping) or not all(isinstance(v, int | float) for v in probs.values()):
        raise BadGateway("TorchServe answered without a probabilities object")
    return probs


def _build(cls: type[_Model], **values: Any) -> _Model:
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise BadGateway(f"TorchServe answered values outside the contract ({exc.error_count()} error(s))") from None


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
    default: str = Field(description="The default version (defaults.json, else the newest).", examples=["1.0"])
    canary: str | None = Field(description="The canary version, if any.", examples=["2.0"])
    canary_percent: float = Field(
        description="Share of unpinned requests sent to the canary (0 without one).", examples=[10.0]
    )
    versions: list[VersionInfo]


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
