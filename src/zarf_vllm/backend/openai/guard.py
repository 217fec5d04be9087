"""What stands in front of vLLM's OpenAI app: health, auth, admission, and one tracked call.

A pure ASGI middleware, so a streamed answer is tracked until its last byte: the call stays in
flight (counting against the shared cap, holding off the drain) for as long as it streams.

- `GET /health`: 200 while serving, 503 while loading or draining, never behind the key
  (Kubernetes probes carry none).
- The API key, when set: `Authorization: Bearer <key>` on every other path, else 401.
- Admission through the backend's one CallTracker: 503 while loading or draining, 429 past the
  cap on calls in flight (both APIs together).
- Until the engine has loaded there is no app to call; the tracker refuses everything then.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from http import HTTPStatus
from typing import Any

import grpc
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zarf_vllm.backend.calls import Call, CallTracker
from zarf_vllm.backend.logs import get_logger
from zarf_vllm.backend.openai.errors import HTTP_STATUS_OF, code_of, error_response
from zarf_vllm.backend.openai.observe import CURRENT_CALL

logger = get_logger("openai")

HEALTH_PATH = "/health"
API = "openai"
# Listing the models is cheap and never waits on the engine: like gRPC's Name, it bypasses
# the cap (but not loading or draining).
_UNCAPPED = {("GET", "/v1/models")}
# Seconds a client should wait before retrying a refusal (429, 503).
_RETRY_AFTER_S = "1"


class Guard:
    def __init__(self, calls: CallTracker, api_key: str | None) -> None:
        self._calls = calls
        self._key_digest = None if api_key is None else _digest(api_key)
        self.app: ASGIApp | None = None  # vLLM's app, once the engine has loaded
        self._paths: frozenset[str] = frozenset()

    def attach(self, app: Any) -> None:
        """Installs vLLM's app; its route paths name the calls in metrics and logs."""
        self._paths = frozenset(getattr(route, "path", "") for route in app.routes)
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan or websockets: uvicorn runs without them
        if scope["path"] == HEALTH_PATH:
            await self._health()(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self._paths else "other"
        call = Call(method=path, request_id=uuid.uuid4().hex, api=API)
        refusal = self._refusal(scope)
        if refusal is not None:
            call.http_status = refusal.status_code
            self._calls.refuse(call, code_of(refusal.status_code))
            await refusal(scope, receive, send)
            return
        await self._serve(call, scope, receive, send)

    def _health(self) -> JSONResponse:
        refused = self._calls.refusal(admit=False)
        if refused is None:
            return JSONResponse({"status": "serving"})
        return error_response(HTTPStatus.SERVICE_UNAVAILABLE, refused[1])

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        if self._key_digest is not None and not self._authorized(Headers(scope=scope)):
            return error_response(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong API key: send the header `Authorization: Bearer <key>`",
            )
        uncapped = (scope.get("method"), scope["path"]) in _UNCAPPED
        refused = self._calls.refusal(admit=not uncapped)
        if refused is None and self.app is None:  # cannot happen: accepting follows attach
            refused = (grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        if refused is None:
            return None
        code, message = refused
        return error_response(
            HTTP_STATUS_OF[code], message, headers={"Retry-After": _RETRY_AFTER_S}
        )

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        assert self._key_digest is not None
        # Digests of equal length: the comparison's time says nothing about the key.
        return hmac.compare_digest(_digest(key.strip()), self._key_digest)

    async def _serve(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None
        progress = _Progress()
        self._calls.enter(call)
        token = CURRENT_CALL.set(call)
        code = grpc.StatusCode.INTERNAL
        try:
            await self.app(scope, progress.watch_receive(receive), progress.watch_send(send))
            code = progress.code()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            if progress.disconnected:
                code = grpc.StatusCode.CANCELLED  # writing to a client that went away
            else:
                logger.exception("OpenAI call %s failed", call.request_id)
                if not progress.started:
                    await error_response(
                        HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the server log"
                    )(scope, receive, send)
        finally:
            call.http_status = progress.status
            CURRENT_CALL.reset(token)
            self._calls.leave(call, code)


class _Progress:
    """How far a response got: its status, whether it ended, whether the client left."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.started = False
        self.finished = False
        self.disconnected = False

    def code(self) -> grpc.StatusCode:
        if not self.finished and self.disconnected:
            return grpc.StatusCode.CANCELLED
        return code_of(self.status or HTTPStatus.INTERNAL_SERVER_ERROR)

    def watch_receive(self, receive: Receive) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
            return message

        return watched

    def watch_send(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.started = True
                self.status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                self.finished = True
            await send(message)

        return watched


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
