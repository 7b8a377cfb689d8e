"""What one request to the handler may hold. The handler's settings default to these; the gateway's own limits must
never be looser, so a request the gateway accepts is never refused upstream."""

from __future__ import annotations

HANDLER_MAX_CHARS = 20_000  # characters per text
HANDLER_MAX_TEXTS = 64  # texts per request
# TorchServe's max_request_size (config.properties): what the gateway forwards must fit in it.
TORCHSERVE_MAX_REQUEST_BYTES = 1_048_576
