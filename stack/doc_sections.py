"""Generated sections of the docs: the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``.

A tool that produces figures (training, ``make bench``, ``make soak``, the README's examples) writes them between its
markers; nothing between markers is typed by hand, and each tool's check compares the section with what it renders.
"""

from __future__ import annotations

import re


class MissingSection(ValueError):
    """The document has no ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->`` block."""


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _block(name: str) -> re.Pattern[str]:
    begin, end = markers(name)
    return re.compile(re.escape(begin) + r"\n?(.*?)" + re.escape(end), flags=re.S)


def section(text: str, name: str) -> str:
    """The body of the named section (between the marker lines)."""
    match = _block(name).search(text)
    if match is None:
        begin, end = markers(name)
        raise MissingSection(f"no {begin} ... {end} block")
    return match.group(1)


def replaced(text: str, name: str, body: str) -> str:
    """``text`` with the named section's body replaced by ``body`` (which ends with a newline)."""
    section(text, name)  # refuses a document without the block
    begin, end = markers(name)
    return _block(name).sub(lambda _: f"{begin}\n{body}{end}", text, count=1)


def check_result(problems: list[str], ok: str) -> int:
    """A check's report and exit status: each problem as a ``drift:`` line and 1, or ``ok`` and 0."""
    for line in problems:
        print(f"drift: {line}")
    if not problems:
        print(ok)
    return 1 if problems else 0
