"""``python -m gateway [--host H] [--port P] [--workers N]``: serve the gateway with the production uvicorn options.

Stock uvicorn with uvloop and its h11 implementation (:mod:`gateway.server`: the head's size, keep-alive and
concurrency bounds from the settings), no access log, no server header, 10 s graceful shutdown.

Settings come from ``GATEWAY_*`` environment variables (docs/configuration.md); a bad value stops start-up.
"""

from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Sequence
from typing import Any

from uvicorn.config import LOGGING_CONFIG

from gateway import server
from gateway.settings import SettingsError, load_settings


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus the ``gateway`` loggers (start-up line, upstream failures, key retries) at ``level``."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["gateway"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="listen port")
    parser.add_argument("--workers", type=int, default=1, help="processes; each has its own pool and /metrics")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="log level"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        load_settings()  # fail here, once, with the variable named, rather than in every worker
    except SettingsError as exc:
        logging.basicConfig()
        logging.getLogger("gateway").critical("%s", exc)
        return 2
    server.run(
        "gateway.app:create_app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        log_config=log_config(args.log_level),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
