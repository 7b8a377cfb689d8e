"""Which TorchServe replicas exist (given in the settings, or discovered in DNS), which one serves next, and how
one is spoken to.

:class:`Upstream` is an address triple, :class:`Rotation` a round-robin with down marks, :func:`discover` one DNS
look-up, and :class:`Replica` one upstream with its own key file: every call carries its key, and a rejected key
is refreshed by the project's one policy (:mod:`torchserve_protocol.keys`) and the call retried once.
:mod:`gateway.torchserve` spreads requests over the replicas and translates what they answer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from gateway.settings import HOST_PLACEHOLDER, Settings
from torchserve_protocol.keys import TOKEN_PATH, KeyFile, KeyKind, bearer, fresh_key_async, is_invalid_key

log = logging.getLogger(__name__)

Resolve = Callable[[str], Awaitable[list[str]]]
Member = TypeVar("Member", bound=Hashable)


@dataclass(frozen=True)
class Upstream:
    """Where one TorchServe replica listens and where its key file lies."""

    inference_base: str
    management_base: str
    key_file: Path

    @property
    def name(self) -> str:
        """``host:port`` of the inference API, for logs (never for a public answer)."""
        return urlsplit(self.inference_base).netloc


def given(settings: Settings) -> list[Upstream]:
    """The replicas named in the settings: ``replicas``, else the one of inference_url/management_url/key_file."""
    if settings.replicas is None:
        return [Upstream(settings.inference_base, settings.management_base, settings.key_file)]
    return [
        Upstream(str(r.inference_url).rstrip("/"), str(r.management_url).rstrip("/"), r.key_file)
        for r in settings.replicas
    ]


def _with_host(url: str, address: str) -> str:
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address  # an IPv6 literal needs brackets in a URL
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def at_addresses(settings: Settings, addresses: Iterable[str]) -> list[Upstream]:
    """One replica per address: the settings' URLs with the host replaced, the key file template filled in."""
    return [
        Upstream(
            _with_host(settings.inference_base, address),
            _with_host(settings.management_base, address),
            Path(str(settings.key_file).replace(HOST_PLACEHOLDER, address)),
        )
        for address in addresses
    ]


async def resolve_all(host: str) -> list[str]:
    """Every address of ``host`` (sorted, no duplicates), without blocking the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def discover(settings: Settings, resolve: Resolve) -> list[Upstream]:
    """The replicas behind the host of ``inference_url`` now; raises :class:`OSError` when it does not resolve."""
    host = urlsplit(settings.inference_base).hostname or ""
    addresses = await resolve(host)
    if not addresses:
        raise OSError(f"{host} resolved to no address")
    return at_addresses(settings, addresses)


class Rotation(Generic[Member]):
    """Round-robin over the members not marked down; a down mark expires after ``down_s`` seconds."""

    def __init__(self, *, down_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.down_s = down_s
        self.clock = clock
        self.members: list[Member] = []
        self._down_until: dict[Member, float] = {}
        self._turn = 0

    def replace(self, members: Iterable[Member]) -> None:
        """New membership; members that stay keep their down marks."""
        self.members = list(dict.fromkeys(members))
        self._down_until = {m: t for m, t in self._down_until.items() if m in self.members}

    def is_down(self, member: Member) -> bool:
        return self._down_until.get(member, 0.0) > self.clock()

    def mark_down(self, member: Member) -> None:
        self._down_until[member] = self.clock() + self.down_s

    def up(self) -> list[Member]:
        return [m for m in self.members if not self.is_down(m)]

    def order(self) -> list[Member]:
        """Who to try for one request: the up members, each request starting one further along. When every
        member is down, all of them, the soonest back first (a lone replica that came back is found at once)."""
        up = self.up()
        if not up:
            return sorted(self.members, key=lambda m: self._down_until.get(m, 0.0))
        start = self._turn % len(up)
        self._turn += 1
        return up[start:] + up[:start]


class Replica:
    """One TorchServe replica: its addresses, its own key file and its own key retry/renewal."""

    def __init__(self, upstream: Upstream, settings: Settings, http: httpx.AsyncClient) -> None:
        self.upstream = upstream
        self.settings = settings
        self.http = http
        self.keys = KeyFile(upstream.key_file)
        self._renew_lock = asyncio.Lock()

    async def send(self, method: str, path: str, *, kind: KeyKind, **kwargs: Any) -> httpx.Response:
        """Send to the inference (``kind="inference"``) or management API of this replica (see :meth:`_send`)."""
        base = self.upstream.inference_base if kind == "inference" else self.upstream.management_base
        return await self._send(method, f"{base}{path}", kind=kind, **kwargs)

    async def _send(self, method: str, url: str, *, kind: KeyKind, **kwargs: Any) -> httpx.Response:
        """Send with the cached key; on TorchServe's invalid-key answer fetch a fresh key and retry exactly once."""
        headers = dict(kwargs.pop("headers", {}))
        key = self.keys.get(kind).value
        response = await self.http.request(method, url, headers={**headers, **bearer(key)}, **kwargs)
        if not is_invalid_key(response.status_code, response.content):
            return response

        async def renew() -> None:
            await self._renew(kind, rejected=key)

        fresh = await fresh_key_async(
            self.keys, kind, rejected=key, wait_s=self.settings.key_refresh_wait_s,
            renew=renew if self.settings.renew_expired_keys else None,
        )  # fmt: skip
        log.info("TorchServe rejected the %s key; retrying once with the key re-read from the file", kind)
        return await self.http.request(method, url, headers={**headers, **bearer(fresh)}, **kwargs)

    async def _renew(self, kind: KeyKind, *, rejected: str) -> None:
        """``POST /token?type=<kind>`` with the API key: TorchServe makes a new key and rewrites the file."""
        async with self._renew_lock:
            if self.keys.reload(kind).value != rejected:
                return  # renewed meanwhile (by this process or another one)
            api_key = self.keys.reload("API").value
            log.info("the %s key in %s has expired; asking TorchServe for a new one", kind, self.keys.path)
            response = await self.http.post(
                f"{self.upstream.management_base}{TOKEN_PATH}", params={"type": kind}, headers=bearer(api_key)
            )
            if response.status_code != 200:
                log.warning("renewing the %s key failed: TorchServe answered %d", kind, response.status_code)
