"""A stand-in TorchServe for measuring the gateway alone: ``POST /predictions/{model}[/{version}]`` answers a fixed
classification per text, as the handler's JSON, with ``X-Model-Version``; the inference key is not checked.

    .venv/bin/python -m benchmarks.stand_in --port 8080 --key-file /tmp/key_file.json

It writes a key file the gateway can read and serves until stopped. Its own CPU is not the gateway's (a separate
process), and it answers in microseconds, so the gateway's CPU per request is what a run under it measures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aiohttp import web

ANSWERS = {
    "cola": {"label": "acceptable", "probabilities": {"unacceptable": 0.1873, "acceptable": 0.8127}},
    "sentiment": {"label": "positive", "probabilities": {"negative": 0.03, "neutral": 0.06, "positive": 0.91}},
}


def write_key_file(path: Path) -> None:
    keys = {
        kind: {"key": f"{kind}-key", "expiration time": "2999-01-01T00:00:00Z"} for kind in ("management", "inference")
    }
    path.write_text(json.dumps({**keys, "API": {"key": "api-key"}}))


async def predictions(request: web.Request) -> web.Response:
    answer = ANSWERS[request.match_info["model"]]
    body = await request.json()
    one = json.dumps(answer)
    text = "[" + ",".join([one] * len(body["texts"])) + "]" if "texts" in body else one
    version = request.match_info.get("version") or "1.0"
    return web.Response(text=text, content_type="application/json", headers={"X-Model-Version": version})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    args = parser.parse_args()
    write_key_file(args.key_file)
    app = web.Application()
    app.router.add_post("/predictions/{model}", predictions)
    app.router.add_post("/predictions/{model}/{version}", predictions)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
