"""The handler's answer, typed: TorchServe's JSON is read once, at the client boundary, into :class:`Classification`
values (pydantic-core parses and checks the bytes in one pass); nothing past the client sees untyped JSON.

The handler answers ``{"text": ...}`` with one ``{"label", "probabilities"}`` object and ``{"texts": [...]}`` with a
list of them, in order. Anything else is TorchServe or the model misbehaving: a 502 ``bad_gateway``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as validated

from gateway.errors import BadGateway

# Strict: a probability is a JSON number (a string or a boolean is an answer outside the contract), within [0, 1].
Probability = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]


@validated(frozen=True, slots=True)
class Classification:
    """One text's answer: the label the model chose and every label's probability, by ``id2label`` name."""

    label: Annotated[str, Field(strict=True)]
    probabilities: dict[str, Probability]


@dataclass(frozen=True, slots=True)
class Prediction:
    results: list[Classification]  # one per text sent, in order
    version: str | None  # X-Model-Version as TorchServe answered it


class UnreadableAnswer(BadGateway):
    """TorchServe answered 200 with something that is not the handler's answer; ``version`` is who answered it."""

    def __init__(self, message: str, *, version: str | None) -> None:
        super().__init__(message)
        self.version = version


_ONE = TypeAdapter(Classification)
_MANY = TypeAdapter(list[Classification])


def read_answer(content: bytes, *, model: str, texts: int | None, version: str | None) -> list[Classification]:
    """The classifications in ``content``: one object when ``texts`` is ``None`` (one text sent), else a list of
    exactly ``texts`` objects."""
    try:
        results = [_ONE.validate_json(content)] if texts is None else _MANY.validate_json(content)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise UnreadableAnswer(f"TorchServe answered non-JSON for model {model!r}", version=version) from None
        where = ".".join(str(part) for part in first["loc"]) or "the answer"
        message = f"TorchServe answered outside the handler's contract for model {model!r}: {where}: {first['msg']}"
        raise UnreadableAnswer(f"{message} ({exc.error_count()} error(s))", version=version) from None
    if len(results) != (texts or 1):
        message = f"TorchServe answered a batch of the wrong shape (expected {texts} results)"
        raise UnreadableAnswer(message, version=version)
    return results
