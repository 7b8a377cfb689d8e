"""The limits the handler enforces and the gateway must respect, against the files that state them elsewhere."""

from __future__ import annotations

from handlers.text_classification import Settings as HandlerSettings
from torchserve_protocol.layout import REPO
from torchserve_protocol.limits import HANDLER_MAX_CHARS, HANDLER_MAX_TEXTS, TORCHSERVE_MAX_REQUEST_BYTES


def test_the_handler_defaults_to_the_protocol_limits() -> None:
    assert (HandlerSettings().max_chars, HandlerSettings().max_texts) == (HANDLER_MAX_CHARS, HANDLER_MAX_TEXTS)


def test_torchserve_is_configured_with_the_request_size_the_gateway_respects() -> None:
    properties = dict(
        line.split("=", 1) for line in (REPO / "config.properties").read_text().splitlines() if line and line[0] != "#"
    )
    assert int(properties["max_request_size"]) == TORCHSERVE_MAX_REQUEST_BYTES
