"""``python -m stack.gateway_limits [--write]``: docs/gateway.md's table of the gateway's client limits, generated.

Each bound is the default of its field in :class:`gateway.settings.Settings`, and each row says what holds it: a
uvicorn option (:func:`gateway.server.uvicorn_options` sets it from that field), the app's middleware, or the edge in
front (nginx, issue 25 item 2, the next step). Without ``--write`` it checks the section (``gateway:limits``,
:mod:`stack.doc_sections`) and exits 1 on drift; ``tests/stack/test_gateway_limits.py`` does the same in ``make test``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from gateway.settings import ENV_PREFIX, Settings
from stack import doc_sections
from torchserve_protocol.layout import REPO

DOC = REPO / "docs" / "gateway.md"
SECTION = "gateway:limits"
KIB = 1_024
MIB = 1_048_576


EDGE = "the edge (next step)"
MIDDLEWARE = "app middleware (`BodyLimit`)"


@dataclass(frozen=True)
class Row:
    """One resource. ``{field}`` in ``bound`` or ``past_it`` is that setting's default, ``{env_field}`` its variable;
    ``held_by`` what enforces it now."""

    resource: str
    bound: str
    held_by: str
    past_it: str


ROWS = (
    Row(
        "request line + headers",
        "{max_header_bytes} ({env_max_header_bytes})",
        "uvicorn: `h11_max_incomplete_event_size` (h11)",
        "400, uvicorn's plain-text `Invalid HTTP request received.`, the connection closed",
    ),
    Row("header lines", "-", EDGE, "no bound of their own in the gateway: only the size above"),
    Row("request target", "within the head's {max_header_bytes}", "uvicorn (h11), as above", "400, as above"),
    Row(
        "time to send the headers",
        "-",
        EDGE,
        "no deadline in the gateway: a connection with a partial head stays open until its client closes it",
    ),
    Row("a malformed request line or header", "-", "uvicorn (h11)", "400, uvicorn's plain text"),
    Row(
        "idle keep-alive connection",
        "{keep_alive_timeout_s} ({env_keep_alive_timeout_s})",
        "uvicorn: `timeout_keep_alive`",
        "closed",
    ),
    Row(
        "open client connections, or requests in progress",
        "{max_client_connections} per process ({env_max_client_connections})",
        "uvicorn: `limit_concurrency`",
        "a new request is answered 503, uvicorn's plain-text `Service Unavailable`, and its connection closed; idle "
        "connections count too",
    ),
    Row("connections per client address", "-", EDGE, "no bound in the gateway"),
    Row(
        "one request body",
        "{max_body_bytes}, {body_timeout_s} ({env_max_body_bytes}, {env_body_timeout_s})",
        MIDDLEWARE,
        "413 `payload_too_large` / 408 `request_timeout`, JSON, `Connection: close`",
    ),
    Row(
        "body bytes held by all requests together",
        "{max_buffered_bytes} ({env_max_buffered_bytes})",
        MIDDLEWARE,
        "503 `unavailable` + Retry-After, JSON, the connection closed and its bytes let go",
    ),
    Row(
        "what a client still sends after an answer that closes its connection (lingering close)",
        "-",
        EDGE,
        "uvicorn closes at once: a client still sending may read a reset after (or instead of) its answer",
    ),
)


def size(n: int) -> str:
    """Bytes as the docs write them: ``32 MiB``, ``16 KiB``, else ``1,000,000 bytes``."""
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if n % unit == 0:
            return f"{n // unit:,} {name}"
    return f"{n:,} bytes"


def shown(name: str, value: object) -> str:
    if name.endswith("_bytes") and isinstance(value, int):
        return size(value)
    if name.endswith("_s") and isinstance(value, int | float):
        return f"{value:g} s"
    return f"{value:,}" if isinstance(value, int) else str(value)


def defaults() -> dict[str, str]:
    """Every setting's default as shown, and ``env_<name>``: its environment variable."""
    values = {name: shown(name, field.default) for name, field in Settings.model_fields.items()}
    return values | {f"env_{name}": f"`{ENV_PREFIX}{name.upper()}`" for name in Settings.model_fields}


def render() -> str:
    values = defaults()
    lines = ["| resource | bound (setting) | held by | past it |", "|---|---|---|---|"]
    lines += [
        f"| {r.resource} | {r.bound.format_map(values)} | {r.held_by} | {r.past_it.format_map(values)} |" for r in ROWS
    ]
    return "\n".join(lines) + "\n"


def drift() -> list[str]:
    if doc_sections.section(DOC.read_text(), SECTION) != render():
        return [f"{DOC.name}: the {SECTION} section is not what gateway.settings.Settings renders"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.gateway_limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the {SECTION} section of docs/gateway.md")
    args = parser.parse_args(argv)
    if args.write:
        DOC.write_text(doc_sections.replaced(DOC.read_text(), SECTION, render()))
        print(f"wrote the {SECTION} section of {DOC.relative_to(REPO)}")
        return 0
    return doc_sections.check_result(drift(), f"{DOC.relative_to(REPO)}'s limits are the settings' defaults")


if __name__ == "__main__":
    sys.exit(main())
