"""The HTTP transport: uvicorn serving an ASGI app inside the backend's own event loop.

The socket is bound here, before uvicorn starts, so the port is known at once (port 0 picks a
free one, for tests) and connections queue in the kernel until uvicorn accepts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The backend owns SIGTERM (drain both APIs, then stop); uvicorn must not take it.
        yield


class HttpTransport:
    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        tls_options: dict[str, Any] | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        """`tls_options`: uvicorn.Config's ssl_* arguments (backend/tls.py); none: plain HTTP.
        `reuse_port`: SO_REUSEPORT, for several front-end processes on one port."""
        self._socket = socket.create_server(
            (host, port), family=_family(host), backlog=2048, reuse_port=reuse_port
        )
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,  # the call tracker logs one JSON line per call instead
            # Streams that outlive the drain are cut when the process stops the engine anyway.
            timeout_graceful_shutdown=5,
            **(tls_options or {}),
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise OSError("the OpenAI HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            self._socket.close()
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
