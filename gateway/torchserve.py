"""The TorchServe client: one inference request per gateway request, sent to one of the replicas (round-robin),
Bearer keys from each replica's key file, and one error-translation boundary (:func:`gateway.errors.translate_errors`;
that module holds the mapping) around every call. A request that never reached a replica (refused, connect
timeout) is sent to the next one first.
Inference is idempotent: an attempt lost with its worker or connection ("Worker died", reset or closed mid-answer,
no answer within ``attempt_timeout_s``) is sent once more, and the client is answered by ``read_timeout_s`` whatever
happens (:meth:`TorchServeClient._at_most_twice`). The error mapping applies to the attempt that answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import httpx
import orjson

from gateway.answers import Prediction, read_answer
from gateway.errors import GatewayError, Unavailable, UpstreamStatusError, translate_errors
from gateway.metrics import Metrics
from gateway.replicas import Replica, Resolve, Rotation, Upstream, discover, given, resolve_all
from gateway.request_id import REQUEST_ID_HEADER, current_request_id
from gateway.settings import Settings
from torchserve_protocol.keys import KeyFileError

log = logging.getLogger(__name__)

# Failures that prove the request never reached TorchServe: safe to send it to another replica.
NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, KeyFileError)
_T = TypeVar("_T")

READY_PROBE_BODY = b'{"text": "ready"}'


def lost(attempt: asyncio.Future[httpx.Response]) -> str | None:
    """Why a finished inference attempt was lost with a worker or a connection (a :data:`RETRY_REASONS` entry), or
    ``None`` when its outcome, good or bad, is the answer. Refused connections are not here: they never reached
    TorchServe and were already tried on every replica."""
    failure = attempt.exception()
    if failure is None:
        response = attempt.result()
        status = response.status_code
        died = status == 507 or (status in (500, 503) and b"Worker died" in response.content)
        return "worker_died" if died else None
    if isinstance(failure, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        return "connection_broken"
    return None


@dataclass(frozen=True)
class ModelStatus:
    ready: bool
    detail: str  # "READY", or why not


NO_REPLICA = ModelStatus(ready=False, detail="no TorchServe replica is known yet")


@dataclass(frozen=True)
class Readiness:
    ready: bool  # at least one replica has a READY worker for every model
    models: dict[str, str]  # per model: "READY" (on some replica), or why not (on the first replica)
    replicas_ready: int
    replicas: int


class TorchServeClient:
    """Calls TorchServe replicas over one shared pooled :class:`httpx.AsyncClient` (owned by the app's lifespan).

    Each request goes to the next replica in round-robin order. A failure that proves nothing reached TorchServe
    (connection refused, connect timeout, key file unreadable) marks that replica down and the same request goes
    to the next one; an inference attempt lost on the way is sent once more (:meth:`_at_most_twice`).
    """

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        resolve: Resolve = resolve_all,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.http = http
        self.resolve = resolve
        self.metrics = metrics or Metrics()
        self.rotation: Rotation[Replica] = Rotation(down_s=settings.replica_down_s)
        if not settings.discover_replicas:
            self._use(given(settings))

    def _use(self, upstreams: list[Upstream]) -> None:
        """Make ``upstreams`` the replicas; those already known keep their cached keys and down marks."""
        known = {replica.upstream: replica for replica in self.rotation.members}
        before = set(known)
        self.rotation.replace(known.get(u) or Replica(u, self.settings, self.http) for u in upstreams)
        if set(upstreams) != before:
            log.info("TorchServe replicas: %s", ", ".join(u.name for u in upstreams))

    async def refresh(self) -> None:
        """Discover the replicas once; a failed look-up keeps the replicas found last time."""
        try:
            self._use(await discover(self.settings, self.resolve))
        except OSError as exc:
            log.warning("replica discovery failed (%s); keeping %d known replica(s)", exc, len(self.rotation.members))

    @asynccontextmanager
    async def discovering(self) -> AsyncIterator[None]:
        """With ``discover_replicas``: discover once now, then every ``replica_refresh_s`` until exit."""
        if not self.settings.discover_replicas:
            yield
            return

        async def again() -> None:
            while True:
                await asyncio.sleep(self.settings.replica_refresh_s)
                await self.refresh()

        await self.refresh()
        task = asyncio.create_task(again(), name="replica-discovery")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def boundary(self) -> AbstractAsyncContextManager[None]:
        return translate_errors(retry_after_s=self.settings.retry_after_s)

    async def _on_a_replica(self, call: Callable[[Replica], Awaitable[_T]], *, avoid: Sequence[Replica] = ()) -> _T:
        """``call`` on the next replica; on a failure before anything was sent, on the one after, and so on.
        Replicas in ``avoid`` (where an attempt of the same request was just lost) are tried last."""
        order = self.rotation.order()
        replicas = [r for r in order if r not in avoid] + [r for r in order if r in avoid]
        if not replicas:
            raise Unavailable("no TorchServe replica is known yet", retry_after_s=self.settings.retry_after_s)
        for index, replica in enumerate(replicas):
            try:
                return await call(replica)
            except NEVER_SENT as exc:
                self.rotation.mark_down(replica)
                log.warning("TorchServe replica %s not reachable (%s): marked down", replica.upstream.name, exc)
                if index == len(replicas) - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _at_most_twice(self, call: Callable[[Replica], Awaitable[httpx.Response]]) -> httpx.Response:
        """``call`` (idempotent inference) on a replica; sent once more when the first attempt was lost (see
        :func:`lost`) or is unanswered after ``attempt_timeout_s`` (then both race, the first answer wins). Whatever
        happens, the answer or the failure comes by ``read_timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.read_timeout_s
        tried: list[Replica] = []

        async def tracked(replica: Replica) -> httpx.Response:
            tried.append(replica)
            return await call(replica)

        attempts = [asyncio.ensure_future(self._on_a_replica(tracked))]
        try:
            done, _ = await asyncio.wait(attempts, timeout=self.settings.attempt_timeout_s)
            reason = lost(attempts[0]) if done else "no_answer"
            if reason is None:
                return attempts[0].result()
            self.metrics.retried(reason)
            log.warning("an inference attempt was lost (%s); sending it once more", reason)
            # another replica first: the one that lost it may be gone, its pooled connections with it
            attempts.append(asyncio.ensure_future(self._on_a_replica(call, avoid=list(tried))))
            pending = {attempt for attempt in attempts if not attempt.done()}
            while pending:
                remaining = max(deadline - loop.time(), 0.0)
                done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise httpx.ReadTimeout("no answer from TorchServe before the deadline")
                answered = [attempt for attempt in done if lost(attempt) is None]
                if answered:
                    return answered[0].result()
            return attempts[-1].result()  # both lost: the second one's failure is the answer
        finally:
            for attempt in attempts:
                if not attempt.done():
                    attempt.cancel()
                elif not attempt.cancelled():
                    attempt.exception()  # retrieved: a failure nobody needs is not reported as unhandled

    async def predict(self, model: str, texts: str | list[str], *, version: str | None = None) -> Prediction:
        """POST one text (``{"text"}``) or a list (``{"texts"}``) in one request to ``/predictions/{model}[/{version}]``
        of a replica; the typed classifications (one per text, in order) and the version that answered."""
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        batch = isinstance(texts, list)
        content = orjson.dumps({"texts": texts} if batch else {"text": texts})

        headers = {"Content-Type": "application/json"}
        request_id = current_request_id.get()
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id

        async def post(replica: Replica) -> httpx.Response:
            return await replica.send("POST", path, kind="inference", content=content, headers=headers)

        async with self.boundary():
            response = await self._at_most_twice(post)
            if response.status_code != 200:
                raise UpstreamStatusError(response, model=model, version=version)
        answered = response.headers.get("X-Model-Version") or version
        texts_sent = len(texts) if batch else None
        results = read_answer(response.content, model=model, texts=texts_sent, version=answered)
        return Prediction(results=results, version=answered)

    async def readiness(self, models: Sequence[str]) -> Readiness:
        """Ask every replica for every model; ready when one replica has a READY worker for all of them."""
        replicas = list(self.rotation.members)
        asked = [self.model_status(replica, model) for replica in replicas for model in models]
        flat = await asyncio.gather(*asked)
        grid = [flat[i * len(models) : (i + 1) * len(models)] for i in range(len(replicas))]
        ready_replicas = sum(all(s.ready for s in row) for row in grid)
        details = {}
        for column, model in enumerate(models):
            statuses = [row[column] for row in grid]
            ready = next((s for s in statuses if s.ready), None)
            details[model] = (ready or (statuses[0] if statuses else NO_REPLICA)).detail
        return Readiness(ready=ready_replicas > 0, models=details, replicas_ready=ready_replicas, replicas=len(grid))

    async def model_status(self, replica: Replica, model: str) -> ModelStatus:
        """Readiness of the default version of ``model`` on ``replica``: a READY worker in ``GET /models/{model}``,
        or with ``ready_probe="inference"`` one real prediction answered 200."""
        if self.settings.ready_probe == "inference":
            return await self.prediction_status(replica, model)
        try:
            async with self.boundary():
                response = await replica.send("GET", f"/models/{model}", kind="management")
                if response.status_code != 200:
                    raise UpstreamStatusError(response, model=model, version=None)
                described = orjson.loads(response.content)
        except GatewayError as exc:
            return ModelStatus(ready=False, detail=exc.message)
        except orjson.JSONDecodeError:
            return ModelStatus(ready=False, detail="unreadable management answer")
        workers = [w for entry in described if isinstance(entry, dict) for w in entry.get("workers", [])]
        if any(isinstance(w, dict) and w.get("status") == "READY" for w in workers):
            return ModelStatus(ready=True, detail="READY")
        return ModelStatus(ready=False, detail=f"no READY worker ({len(workers)} worker(s))")

    async def prediction_status(self, replica: Replica, model: str) -> ModelStatus:
        """READY when ``POST /predictions/{model}`` with a short text answers 200 on ``replica``."""
        try:
            async with self.boundary():
                response = await replica.send(
                    "POST", f"/predictions/{model}", kind="inference", content=READY_PROBE_BODY,
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                if response.status_code != 200:
                    raise UpstreamStatusError(response, model=model, version=None)
        except GatewayError as exc:
            return ModelStatus(ready=False, detail=exc.message)
        return ModelStatus(ready=True, detail="READY")
