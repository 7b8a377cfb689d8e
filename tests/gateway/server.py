"""The real gateway served by uvicorn in a background thread on a free loopback port, for integration tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from gateway.app import create_app
from gateway.server import uvicorn_options
from gateway.settings import Settings
from stack.torchserve import CONFIG, Ports, TorchServe
from tests.conftest import apply_store, launch_torchserve


def settings_for(ts: TorchServe, **overrides: object) -> Settings:
    """Gateway settings pointing at one TorchServe instance and its key file."""
    values: dict[str, object] = {
        "inference_url": ts.inference_url,
        "management_url": ts.management_url,
        "key_file": ts.key_file,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@contextmanager
def running_gateway(settings: Settings, *, start_timeout: float = 20.0) -> Iterator[str]:
    """Serve the app with the production uvicorn options (uvloop, h11 and its bounds); yield its base URL once
    /health answers; always stop."""
    options = uvicorn_options(settings)
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, lifespan="on", log_level="warning", **options
    )  # port 0: the kernel picks a free port as uvicorn binds it (no race with another process)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the gateway thread exited during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not listening after {start_timeout:.0f}s")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        base_url = f"http://127.0.0.1:{port}"
        while True:
            if not thread.is_alive():
                raise RuntimeError("the gateway thread exited during start-up")
            try:
                if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway on {base_url} not up after {start_timeout:.0f}s")
            time.sleep(0.05)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)


@contextmanager
def private_torchserve(
    store: Path, run_dir: Path, *, ports: Ports | None = None, config: Path = CONFIG, follow: bool = False
) -> Iterator[TorchServe]:
    """A TorchServe of its own (the store's state applied, every worker READY), stopped on exit. With ``follow`` the
    launcher's reconciler keeps it serving the store's served.json meanwhile (what ``publish`` changes).

    Started again in the same ``run_dir`` with the same ``ports`` it is the same server (same key file); those ports
    are checked free first (``launch_torchserve``). Without ``ports`` it takes free ones, retrying on a lost race.
    """
    ts = launch_torchserve(store, run_dir, ports=ports, config=config)
    following = None
    try:
        reconciler = apply_store(ts, store)
        if follow:
            following = reconciler.start()
        yield ts
    finally:
        if following is not None:
            thread, stop = following
            stop.set()
            thread.join(timeout=60)
        ts.stop()
