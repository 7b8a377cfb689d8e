"""The gateway's HTTP/1.1 server: uvicorn's httptools protocol (the lowest CPU per request measured in
docs/performance.md) with the bounds it lacks, enforced before any request reaches the app.

uvicorn's httptools parser accepts a request line and headers of any size and any count (a never-ending header
value was read for 64 MiB), keeps a new connection that sends nothing forever, and has no connection cap that
answers in JSON. :class:`BoundedHttpToolsProtocol` adds, per connection:

* the request line plus headers at most ``max_header_bytes`` (431), the target at most ``max_url_bytes`` (414),
  at most ``max_headers`` header lines (431); counted as bytes arrive, so a flood is cut after a few KiB;
* the whole head within ``header_timeout_s`` of the connection opening or of the request's first byte (408 when
  part of a head arrived, else the connection is simply closed);
* at most ``max_client_connections`` open connections: a connection lingering after its answer (below), else the
  one idle the longest, is closed to make room, and when none can go the new one gets 503 + Retry-After;
* a malformed request gets 400; every answer here is ``{"error", "type"}`` JSON with ``Connection: close``.

Every connection the server closes after an answer while the client may still be sending (these refusals, and an
app's ``Connection: close`` answer given before the request's body was read to its end: 413, 408, 503) is closed by
a **lingering close** (:meth:`BoundedHttpToolsProtocol.linger`), as nginx and Apache do: closing a socket that holds
unread bytes makes the kernel answer with a reset instead of a FIN, and the reset can cost the client the answer
(Linux reports it on the client's next read; other stacks drop the unread answer). So the sending side is shut
first (the FIN follows the answer), and what still comes is read and dropped until the client closes, for at most
``linger_s`` and ``linger_bytes``; then the connection is closed. A lingering connection still counts against the
connection cap and is the first closed to make room.

It also writes each answer of the app in one socket write where uvicorn makes two (:class:`OneWriteAnswer`).

Keep-alive idle connections are closed after ``keep_alive_timeout_s`` by uvicorn itself (``timeout_keep_alive``);
request bodies are bounded by :class:`gateway.middleware.BodyLimit` (size, deadline, total buffered).
"""

from __future__ import annotations

import asyncio
import http
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.settings import Settings, load_settings


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_url_bytes: int
    max_headers: int
    header_timeout_s: float
    max_client_connections: int
    retry_after_s: int
    linger_s: float
    linger_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_url_bytes=settings.max_url_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            max_client_connections=settings.max_client_connections,
            retry_after_s=settings.retry_after_s,
            linger_s=settings.linger_s,
            linger_bytes=settings.linger_bytes,
        )


class OneWriteAnswer(asyncio.Transport):
    """The connection as one response cycle writes to it: the answer's head leaves with its first body bytes.

    uvicorn writes a response's head (status line and headers) when the app sends ``http.response.start`` and the
    body with each ``http.response.body``: two system calls and two TCP segments for every small answer, where one
    does (docs/performance.md, section 3b). Here the head is held and written together with the first body bytes
    (a 304 or an empty body is written too, as zero bytes). When they do not follow at once (a file read, a stream),
    the head leaves alone at the end of this event-loop turn, or when the connection is closed, so no answer waits
    for it; an answer to HEAD, which never has body bytes, is not held. The bytes and their order are unchanged."""

    __slots__ = ("_cycle", "_head", "_head_seen", "_loop", "_protocol", "_transport")

    def __init__(self, protocol: BoundedHttpToolsProtocol, cycle: RequestResponseCycle):
        super().__init__()
        self._protocol = protocol
        self._transport = protocol.transport
        self._cycle = cycle
        self._loop = protocol.loop
        self._head: bytes | None = None
        self._head_seen = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.writelines((head, data))  # one system call, no copy of the body
        elif self._head_seen or not self._cycle.response_started:  # a body, or "100 Continue" before the answer
            self._transport.write(data)
        else:  # uvicorn marks the response started, then writes its head: this write
            self._head_seen = True
            if self._cycle.scope["method"] == "HEAD":  # no body bytes will follow
                self._transport.write(data)
                return
            self._head = bytes(data)
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write a head still held (nothing when it left with the body)."""
        head = self._head
        if head is not None:
            self._head = None
            if not self.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        """The answer closes the connection (``Connection: close``, or the app failed): see
        :meth:`BoundedHttpToolsProtocol.close_after_answer`."""
        self.flush()
        self._protocol.close_after_answer()

    def is_closing(self) -> bool:
        """Also once the answer was given up (a lingering close ended the request): nothing more may be written."""
        return self._cycle.disconnected or self._transport.is_closing()


class _Refused(Exception):
    """Raised inside a parser callback; httptools wraps it, :meth:`BoundedHttpToolsProtocol.data_received` answers."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above. ``limits`` unset: read once per process from the
    ``GATEWAY_*`` environment (``python -m gateway``, where uvicorn may start several worker processes)."""

    limits: ClassVar[HttpLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.limits is None:
            cls.limits = HttpLimits.of(load_settings())
        self.bounds: HttpLimits = cls.limits
        self.head_bytes = 0  # bytes of the current request's head received so far
        self.in_head = True  # no request, or one whose headers are not complete yet
        self.header_count = 0
        self.header_size = 0
        self.idle_since: float | None = None  # set while no request is in progress
        self.refusal: tuple[int, str, str] | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.linger_left: int | None = None  # while lingering: the bytes it may still read and drop
        self.linger_since: float | None = None  # while lingering: when it began
        self.linger_timer: asyncio.TimerHandle | None = None  # while lingering: its end

    # Connection life cycle

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.idle_since = time.monotonic()
        self._arm_head_timer()
        if len(self.connections) > self.bounds.max_client_connections and not self._make_room():
            self.refuse(503, "too many open connections; retry later", "unavailable")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.linger_left is not None:  # its answer is out: nothing to wait for
            self.transport.close()
        else:
            super().shutdown()

    def _make_room(self) -> bool:
        """Close connections until this one fits under the cap: those lingering after their answer (the one lingering
        the longest first), then the ones idle the longest. False when that is not enough. Connections already
        closing do not count (they are gone once the loop gets to them)."""
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        excess = len(others) + 1 - self.bounds.max_client_connections
        if excess <= 0:
            return True
        ours = [c for c in others if isinstance(c, BoundedHttpToolsProtocol)]
        lingering = sorted((c for c in ours if c.linger_since is not None), key=_linger_since)
        idle = sorted((c for c in ours if c.idle_since is not None), key=_idle_since)
        victims = (lingering + idle)[:excess]
        for victim in victims:
            victim.idle_since = None
            victim.transport.close()
        return len(victims) == excess

    # Bytes in: count the head before the parser buffers it

    def data_received(self, data: bytes) -> None:
        if self.linger_left is not None:  # answered and closing: read and drop, within the bound
            self.linger_left -= len(data)
            if self.linger_left < 0:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if self.in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused) and self.refusal is not None:
                self.refuse(*self.refusal)
                return
            raise
        except httptools.HttpParserUpgrade:  # e.g. "Upgrade: h2c": served as HTTP/1.1, as uvicorn does
            pass
        except httptools.HttpParserError:
            self.refuse(400, "malformed HTTP request", "bad_request")
            return
        if self.in_head and self.head_bytes > self.bounds.max_header_bytes:
            self.refuse(431, f"the request head is over {self.bounds.max_header_bytes} bytes", "headers_too_large")

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        self.idle_since = None
        self.header_count = 0
        self.header_size = 0
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.bounds.max_url_bytes:
            self._stop(414, f"the request target is over {self.bounds.max_url_bytes} bytes", "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self.header_size += len(name) + len(value) + 4  # ": " and CRLF
        if self.header_count > self.bounds.max_headers:
            self._stop(431, f"more than {self.bounds.max_headers} header lines", "headers_too_large")
        if self.header_size + len(self.url) > self.bounds.max_header_bytes:  # a whole head in one read
            self._stop(431, f"the request head is over {self.bounds.max_header_bytes} bytes", "headers_too_large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self.in_head = False
        self.head_bytes = 0
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a new request's cycle (an upgrade makes none); its task has not run yet
            self.cycle.transport = OneWriteAnswer(self, self.cycle)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_head = True  # the next bytes on this connection belong to the next request's head
        self.head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.linger_left is not None:  # the answer closed the connection: no keep-alive wait
            self._unset_keepalive_if_required()
        elif self.refusal is None and not self.pipeline:
            self.idle_since = time.monotonic()

    def _stop(self, status: int, message: str, kind: str) -> None:
        self.refusal = (status, message, kind)
        raise _Refused(message)

    # Deadline for the head

    def _arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.bounds.header_timeout_s, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_too_slow(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not self.in_head or self.refusal is not None:
            return
        if self.head_bytes == 0:  # nothing of a request arrived: nobody to answer
            self.transport.close()
            return
        limit = self.bounds.header_timeout_s
        self.refuse(408, f"the request headers did not arrive within {limit:g} s", "request_timeout")

    # The answer

    def refuse(self, status: int, message: str, kind: str) -> None:
        """Answer ``{"error", "type"}`` with ``status`` and close the connection (the app never sees the request)."""
        self.refusal = (status, message, kind)
        self.idle_since = None
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        body = orjson.dumps({"error": message, "type": kind})
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(),
            b"connection: close",
        ]
        if status == 503:
            head.append(b"retry-after: " + str(self.bounds.retry_after_s).encode())
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        if self.pipeline:  # an earlier request is still answered, which may write after us: no half-close under it
            self.transport.close()
        else:
            self.linger()

    def close_after_answer(self) -> None:
        """The app's answer closes the connection: at once when its request was read to its end (the client has
        nothing more to send), else by :meth:`linger` (a 413 before the body, a 408 or 503 amid it)."""
        if self.in_head:  # set again once a request's message is complete
            self.transport.close()
        else:
            self.linger()

    def linger(self) -> None:
        """Close after an answer while the client may still be sending: shut the sending side now (the FIN follows
        the answer), read and drop what comes until the client closes (then the transport closes itself), at most
        ``linger_bytes`` of it and for at most ``linger_s``; then close. The request in progress, if any, is over
        (its app sees a disconnect) and pipelined ones are dropped."""
        transport = self.transport
        if transport.is_closing() or self.linger_left is not None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self.idle_since = None
        self._cancel_head_timer()
        self.pipeline.clear()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.flow.resume_reading()
        transport.write_eof()
        self.linger_left = self.bounds.linger_bytes
        self.linger_since = time.monotonic()
        self.linger_timer = self.loop.call_later(self.bounds.linger_s, transport.close)


def _linger_since(connection: BoundedHttpToolsProtocol) -> float:
    return connection.linger_since or 0.0


def _idle_since(connection: BoundedHttpToolsProtocol) -> float:
    return connection.idle_since or 0.0


def protocol_for(settings: Settings) -> type[BoundedHttpToolsProtocol]:
    """A protocol class bound to ``settings``' limits (one server in this process: tests, embedding)."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"limits": HttpLimits.of(settings)})


def uvicorn_options(settings: Settings | None = None) -> dict[str, Any]:
    """The uvicorn options the gateway runs with (``python -m gateway`` and the tests alike)."""
    return {
        "loop": "uvloop",
        "http": BoundedHttpToolsProtocol if settings is None else protocol_for(settings),
        "timeout_keep_alive": (settings or load_settings()).keep_alive_timeout_s,
        "access_log": False,  # request counts and latencies are on /metrics; no per-request log lines
        "server_header": False,
        "timeout_graceful_shutdown": 10,
    }


def run(app: str, *, host: str, port: int, workers: int, log_level: str, log_config: dict[str, Any]) -> None:
    uvicorn.run(
        app, factory=True, host=host, port=port, workers=workers, log_level=log_level, log_config=log_config,
        **uvicorn_options(),
    )  # fmt: skip
