"""Just enough Markdown for the docs' checks: the documents, their blocks, inline code, code blocks and anchors."""

from __future__ import annotations

import re
from pathlib import Path

from torchserve_protocol.layout import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
BLOCK_START = re.compile(r"^(\||[-*] |\d+\. |#)")


def name(doc: Path) -> str:
    return str(doc.relative_to(REPO))


def prose(doc: Path) -> str:
    """The document without its fenced code blocks."""
    return FENCE.sub("", doc.read_text())


def code_blocks(doc: Path) -> list[str]:
    return FENCE.findall(doc.read_text())


def blocks(doc: Path) -> list[str]:
    """Paragraphs, list items, table rows and headings of the prose, each joined into one line."""
    found: list[list[str]] = []
    for line in prose(doc).splitlines():
        if not line.strip():
            found.append([])
        elif BLOCK_START.match(line) or not found:
            found.append([line])
        else:
            found[-1].append(line.strip())
    return [" ".join(lines) for lines in found if lines]


def inline_code(doc: Path) -> list[str]:
    return INLINE_CODE.findall(prose(doc))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose(doc).splitlines() if line.startswith("#")}
