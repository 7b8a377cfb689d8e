"""``python -m stack.gateway_limits [--write]``: docs/gateway.md's table of the gateway's client limits, generated.

Each bound is the default of its field in :class:`gateway.settings.Settings`, and each row says what holds it: a
uvicorn option (:func:`gateway.server.uvicorn_options` sets it from that field), the app's middleware, or the edge in
front (nginx: ``edge/nginx.conf.template``). Without ``--write`` it checks the section (``gateway:limits``,
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


EDGE = "the edge (nginx, `edge/nginx.conf.template`)"
MIDDLEWARE = "app middleware (`BodyLimit`)"
HEADER_COUNT = "app middleware (`GatewayMiddleware`)"


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
        "a line 8 KiB, the head two 8 KiB buffers (`large_client_header_buffers 2 8k`); behind it "
        "{max_header_bytes} ({env_max_header_bytes}, uvicorn's `h11_max_incomplete_event_size`)",
        EDGE,
        "431 `headers_too_large` (nginx's 494), JSON, the connection closed",
    ),
    Row(
        "header lines",
        "{max_headers} ({env_max_headers})",
        HEADER_COUNT,
        "431 `headers_too_large`, JSON, `Connection: close` (nginx cannot count lines; the edge adds "
        "X-Forwarded-For and X-Forwarded-Proto)",
    ),
    Row("request target", "8 KiB (one header buffer)", EDGE, "414 `uri_too_long`, JSON"),
    Row(
        "time to send the headers",
        "10 s from the connection's opening (`client_header_timeout`)",
        EDGE,
        "closed **without an answer** (nginx sends no 408: the gateway's former 408 `request_timeout` is gone)",
    ),
    Row("a malformed request line or header", "-", EDGE, "400 `bad_request`, JSON"),
    Row(
        "idle keep-alive connection",
        "5 s (`keepalive_timeout`); behind it {keep_alive_timeout_s} ({env_keep_alive_timeout_s}, uvicorn's "
        "`timeout_keep_alive`)",
        EDGE,
        "closed",
    ),
    Row(
        "TCP connections per client address",
        "256 (stream `limit_conn`)",
        EDGE,
        "a new connection is closed at accept, no answer",
    ),
    Row(
        "requests in progress per client address",
        "64 (http `limit_conn`)",
        EDGE,
        "429 `too_many_requests` + Retry-After, JSON",
    ),
    Row(
        "open client connections",
        "8,192 nginx connections (`worker_connections`; a proxied request holds up to 4); behind it "
        "{max_client_connections} per gateway process ({env_max_client_connections}, uvicorn's `limit_concurrency`)",
        EDGE,
        "nginx accepts no more (no answer: the former 503 + Retry-After and the closing of idle or lingering "
        "connections to make room are gone); past the gateway's, uvicorn's plain-text 503",
    ),
    Row(
        "one request body",
        "1,000,000 bytes (`client_max_body_size`), 10 s between two reads (`client_body_timeout`); behind it "
        "{max_body_bytes}, {body_timeout_s} ({env_max_body_bytes}, {env_body_timeout_s})",
        f"{EDGE}; {MIDDLEWARE}",
        "413 `payload_too_large`, JSON; a stalled body is closed **without an answer** (no 408)",
    ),
    Row(
        "body bytes held by all requests together",
        "{max_buffered_bytes} ({env_max_buffered_bytes}) in the gateway; the edge spools a body over 64 KiB to "
        "its temp folder, unbounded in total",
        MIDDLEWARE,
        "503 `unavailable` + Retry-After, JSON, the connection closed and its bytes let go",
    ),
    Row(
        "what a client still sends after an answer that closes its connection (lingering close)",
        "2 s in all, 1 s between two reads (`lingering_time`, `lingering_timeout`); no byte bound (the former "
        "64 KiB is gone)",
        EDGE,
        "read and dropped after the answer and its FIN, then closed",
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
