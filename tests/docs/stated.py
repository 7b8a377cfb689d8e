"""A claim in a doc, and the few ways the docs write a value (words for small counts, ``3e-5``, ``1-128``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from gateway.settings import Settings

MIB = 1_048_576
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
BASE_NAMES = {"mpnet": "MPNet", "minilm": "MiniLM"}
T = TypeVar("T")


@dataclass(frozen=True)
class Stated:
    doc: str
    text: str  # the doc's words; each {} is a value, in order
    values: tuple[object, ...]

    @property
    def expected(self) -> str:
        return " ".join(self.text.format(*self.values).split())


def stated(doc: str, text: str, *values: object) -> Stated:
    return Stated(doc, text, values)


def default(setting: str) -> object:
    return Settings.model_fields[setting].default


def seconds(setting: str) -> str:
    return f"{default(setting):g}"


def port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def one_token(pattern: str) -> tuple[tuple[str, str], str]:
    """``^[A-Za-z0-9._:-]{1,128}$`` as the docs write it: ``("1", "128")`` and ``"A-Z a-z 0-9 . _ : -"``."""
    form = re.fullmatch(r"\^\[(.*)\]\{(\d+),(\d+)\}\$", pattern)
    assert form, pattern
    return (form[2], form[3]), " ".join(re.findall(r"\w-\w|.", form[1]))


def sci(x: float) -> str:
    """3e-05 as the docs write it: 3e-5."""
    return re.sub(r"e-0*", "e-", f"{x:.0e}")


def the_one(*values: T) -> T:
    """The value that several sources agree on, where a doc states it once for all of them."""
    assert len(set(values)) == 1, f"the doc states one value where the code has {sorted(map(str, set(values)))}"
    return values[0]


def span(values: list[int]) -> str:
    """[1, 2] -> "1-2", [3] -> "3": a range of small integers as the docs write it."""
    assert values == list(range(values[0], values[-1] + 1)), values
    return f"{values[0]}-{values[-1]}" if len(values) > 1 else str(values[0])
