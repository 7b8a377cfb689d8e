"""Shadow traffic: a copy of a share of a model's unpinned requests goes to the store's shadow version (pinned in
TorchServe, ``/predictions/<model>/<shadow version>``) once the client's answer is written, and the two answers are
compared in :mod:`gateway.shadow_metrics`. The shadow's answer is discarded.

The client never waits for, nor fails with, its copy: the copy is started by the answer's background step (Starlette
runs it after the last byte of the body was sent: :func:`gateway.routes.infer`), as a task of its own that the
answer does not await. Copies are bounded: at most ``shadow_max_in_flight`` at a time (one
more is dropped as ``busy``, never queued), each given ``shadow_timeout_s``; a failure of any kind is a counted drop,
never an error anyone sees. Which requests are copied is the canary split's deterministic interleave
(:class:`gateway.canary.Interleave`, over the unpinned requests answered 200): exactly ``floor(N * percent / 100)``
of every N, so a test needs no seed. A request answered with an error is not copied (there is nothing to compare),
nor one the shadow version itself answered (a canary that is also the shadow).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.background import BackgroundTask

from gateway.answers import Prediction
from gateway.canary import Interleave, StateWatcher
from gateway.errors import GatewayError
from gateway.model_metrics import UNKNOWN
from gateway.shadow_metrics import Pair, ShadowMetrics
from gateway.torchserve import TorchServeClient

log = logging.getLogger(__name__)


class Shadow:
    """Sends the shadow copies of one app (its lifespan closes it: :meth:`aclose`)."""

    def __init__(self, watcher: StateWatcher, metrics: ShadowMetrics, *, timeout_s: float, max_in_flight: int) -> None:
        self.watcher = watcher
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self._split = Interleave()
        self._in_flight: set[asyncio.Task[None]] = set()

    def after(
        self, client: TorchServeClient, model: str, texts: str | list[str], answer: Prediction
    ) -> BackgroundTask | None:
        """What to do once the client has ``answer`` (an unpinned request's): send its copy, or nothing."""
        share = self.watcher.shadows().get(model)
        if share is None or share.version == answer.version or not self._split.hit(model, share.basis_points):
            return None
        pair = self.metrics.pair(model, answer.version or UNKNOWN, share.version)
        return BackgroundTask(self._start, client, pair, texts, answer)

    async def _start(self, client: TorchServeClient, pair: Pair, texts: str | list[str], answer: Prediction) -> None:
        """Start the copy and return at once: the answer's connection is not held while the shadow works."""
        if len(self._in_flight) >= self.max_in_flight:
            self.metrics.drop(pair, "busy")
            return
        self.metrics.sent(pair)
        task = asyncio.create_task(self._copy(client, pair, texts, answer), name=f"shadow-{pair[0]}")
        self._in_flight.add(task)
        self.metrics.in_flight = len(self._in_flight)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self.metrics.in_flight = len(self._in_flight)

    async def _copy(self, client: TorchServeClient, pair: Pair, texts: str | list[str], answer: Prediction) -> None:
        model, _, version = pair
        try:
            async with asyncio.timeout(self.timeout_s):
                shadowed = await client.predict(model, texts, version=version)
        except TimeoutError:
            self.metrics.drop(pair, "timeout")
            return
        except GatewayError as exc:  # TorchServe's own timeout is a timeout too; everything else is an error
            self.metrics.drop(pair, "timeout" if exc.type == "timeout" else "error")
            return
        except Exception:  # a task's failure must not go unseen nor reach the event loop's handler
            log.exception("shadow copy to %s %s failed", model, version)
            self.metrics.drop(pair, "error")
            return
        self.metrics.compare(pair, answer.results, shadowed.results)

    async def settled(self) -> None:
        """Wait until no copy is in flight (tests, and shutdown)."""
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    async def aclose(self) -> None:
        """Cancel the copies still in flight (the connections they use are closing)."""
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
