"""``python -m stack.gateway_limits [--write]``: docs/gateway.md's table of the gateway's client limits, generated.

Each bound is the default of its field in :class:`gateway.settings.Settings` (and uvicorn's flow-control mark), so
the documented limits are the ones the gateway starts with. Without ``--write`` it checks the section
(``gateway:limits``, :mod:`stack.doc_sections`) and exits 1 on drift; ``tests/stack/test_gateway_limits.py`` does the
same in ``make test``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

from gateway.settings import ENV_PREFIX, Settings
from stack import doc_sections
from torchserve_protocol.layout import REPO

DOC = REPO / "docs" / "gateway.md"
SECTION = "gateway:limits"
KIB = 1_024
MIB = 1_048_576


@dataclass(frozen=True)
class Row:
    """One resource. ``{field}`` in ``bound`` or ``past_it`` is that setting's default, ``{env_field}`` its variable."""

    resource: str
    bound: str
    past_it: str


ROWS = (
    Row(
        "request line + headers",
        "{max_header_bytes} ({env_max_header_bytes}), counted as bytes arrive",
        "431 `headers_too_large`, after ~{max_header_bytes} read",
    ),
    Row("header lines", "{max_headers} ({env_max_headers})", "431 `headers_too_large`"),
    Row("request target", "{max_url_bytes} ({env_max_url_bytes})", "414 `uri_too_long`"),
    Row(
        "time to send the headers",
        "{header_timeout_s} from the request's first byte or the connection's opening ({env_header_timeout_s})",
        "408 `request_timeout`; a connection that sent nothing is closed silently",
    ),
    Row("a malformed request line or header", "-", "400 `bad_request`"),
    Row(
        "idle keep-alive connection",
        "{keep_alive_timeout_s} ({env_keep_alive_timeout_s}, uvicorn's `timeout_keep_alive`)",
        "closed",
    ),
    Row(
        "open client connections",
        "{max_client_connections} per process ({env_max_client_connections})",
        "a connection lingering after its answer, else the one idle the longest, is closed to make room (so idle "
        "connections never starve a real request); when none can go, the new connection gets 503 `unavailable` + "
        "Retry-After and is closed",
    ),
    Row(
        "one request body",
        "{max_body_bytes}, {body_timeout_s} ({env_max_body_bytes}, {env_body_timeout_s})",
        "413 `payload_too_large` / 408 `request_timeout`",
    ),
    Row(
        "body bytes held by all requests together",
        "{max_buffered_bytes} ({env_max_buffered_bytes})",
        "503 `unavailable` + Retry-After, the connection closed and its bytes let go",
    ),
    Row(
        "what a client still sends after an answer that closes its connection (any above, the request not read to "
        "its end)",
        "{linger_s}, {linger_bytes} ({env_linger_s}, {env_linger_bytes})",
        "read and dropped after the answer and its FIN (a lingering close, so no reset can cost the client the "
        "answer) until the client closes; past either bound the connection is closed",
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
    lines = ["| resource | bound (setting) | past it |", "|---|---|---|"]
    lines += [f"| {r.resource} | {r.bound.format_map(values)} | {r.past_it.format_map(values)} |" for r in ROWS]
    lines += [
        "",
        f"Below the app, uvicorn stops reading a connection once {size(HIGH_WATER_LIMIT)} of its body wait unread",
        "(flow control), so what the server holds per connection is bounded too.",
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
