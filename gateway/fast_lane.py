"""The inference routes' fast lane: a plainly formed, valid request to one of the four inference routes is answered
by the same :func:`gateway.routes.infer` as its FastAPI endpoint, without FastAPI's request handling around it.

Why: for a proxied ``/generate``, FastAPI's routing, its exception and exit-stack layers, dependency solving (two
optional headers, the TorchServe client), the body parsed by the json module and validated again, were the largest
part of the gateway's own CPU (docs/performance.md, section 3c). The lane reads what that request needs directly:

* the body, already read whole and bounded by :class:`gateway.middleware.BodyLimit`, validated by the route's own
  request model straight from the bytes (pydantic-core's JSON parser);
* ``X-Model-Version`` and ``X-Client-Key``, validated against the same patterns as the endpoint's header parameters.

It changes CPU, never an answer: what it is not sure to read exactly as FastAPI does goes to FastAPI, untouched (a
Content-Type other than ``application/json``, a header sent twice, a body sent in parts, a body the model refuses:
FastAPI writes its 422; every other method and path). ``tests/gateway/test_fast_lane.py`` sends the same requests to
a gateway with and without the lane and compares the answers byte for byte. A :class:`~gateway.errors.GatewayError`
on the way is answered by the app's one exception handler (:func:`gateway.errors.handle_error`), as in FastAPI; any
other exception goes up to Starlette's server-error layer, as it does from the endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field, TypeAdapter, ValidationError
from starlette.datastructures import State
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.canary import CLIENT_KEY_HEADER, CLIENT_KEY_PATTERN
from gateway.errors import GatewayError, handle_error
from gateway.routes import MODEL_VERSION_HEADER, Inference, infer
from gateway.torchserve import TorchServeClient
from torchserve_protocol.archives import VERSION_PATTERN

# The Content-Type values taken here; FastAPI reads any application/json or application/*+json type, with any
# parameters and letter case, and those (rarer) requests go to it.
JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8"})
_CONTENT_TYPE = b"content-type"
_VERSION = MODEL_VERSION_HEADER.lower().encode()
_CLIENT_KEY = CLIENT_KEY_HEADER.lower().encode()
# The endpoint's header parameters validate with these patterns (pydantic-core's regex engine, as here).
_VERSION_VALUE: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(pattern=VERSION_PATTERN)])
_CLIENT_KEY_VALUE: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(pattern=CLIENT_KEY_PATTERN)])


class FastLane:
    """An ASGI layer in front of FastAPI's (``app``): the requests it can answer exactly as the endpoints would, it
    answers; the others pass to ``app`` unchanged. ``state`` is the app's (``chooser``, ``metrics``)."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[Inference], state: State) -> None:
        self.app = app
        self.routes = {route.path: route for route in routes}
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        first = await receive()
        if not await self._answered(route, scope, first, receive, send):
            await self.app(scope, _replay(first, receive), send)

    async def _answered(self, route: Inference, scope: Scope, first: Message, receive: Receive, send: Send) -> bool:
        """Answer the request and say so, or say that FastAPI must (nothing was sent then)."""
        if first["type"] != "http.request" or first.get("more_body", False):
            return False
        content_type = pinned = client_key = None
        for name, value in scope["headers"]:
            if name == _CONTENT_TYPE:
                if content_type is not None:
                    return False
                content_type = value
            elif name == _VERSION:
                if pinned is not None:
                    return False
                pinned = value.decode("latin-1")
            elif name == _CLIENT_KEY:
                if client_key is not None:
                    return False
                client_key = value.decode("latin-1")
        if content_type not in JSON_TYPES:
            return False
        try:
            body = route.request.model_validate_json(first.get("body", b""))
            if pinned is not None:
                _VERSION_VALUE.validate_python(pinned)
            if client_key is not None:
                _CLIENT_KEY_VALUE.validate_python(client_key)
        except ValidationError:
            return False
        scope["route"] = route  # what the metrics label the request with (its template, ``route.path``)
        client: TorchServeClient = scope["state"]["torchserve"]
        try:
            response = await infer(self.state, client, route, body.payload(), pinned=pinned, client_key=client_key)
        except GatewayError as exc:
            response = await handle_error(Request(scope), exc)
        await response(scope, receive, send)
        return True


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` with ``first`` given back once more, first."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return first
        return await receive()

    return again
