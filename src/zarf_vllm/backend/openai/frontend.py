"""The OpenAI API's life in the backend process, in the steps `server.py` takes.

`start()` listens at once (answering 503 and /health 503 while the model loads), `attach()`
builds vLLM's serving layer on the loaded engine, `stop()` ends the transport after the drain.
"""

from __future__ import annotations

from collections.abc import Sequence

from zarf_vllm.backend.adapters import ServedAdapter
from zarf_vllm.backend.calls import CallTracker
from zarf_vllm.backend.config import Settings
from zarf_vllm.backend.engine import Engine
from zarf_vllm.backend.openai.guard import Guard
from zarf_vllm.backend.openai.serving import build_app
from zarf_vllm.backend.openai.transport import HttpTransport
from zarf_vllm.backend.tls import TLSFiles, uvicorn_options


class OpenAIFrontend:
    def __init__(
        self,
        settings: Settings,
        calls: CallTracker,
        served_name: str,
        adapters: Sequence[ServedAdapter] = (),
        *,
        reuse_port: bool = False,
    ) -> None:
        """`reuse_port`: other front-end processes listen on the same port (SO_REUSEPORT)."""
        key = settings.openai.api_key
        self._guard = Guard(calls, None if key is None else key.get_secret_value())
        self._settings = settings
        self._served_name = served_name
        self._adapters = tuple(adapters)
        self._transport: HttpTransport | None = None
        self._reuse_port = reuse_port

    @property
    def port(self) -> int | None:
        return None if self._transport is None else self._transport.port

    async def start(self, tls: TLSFiles | None = None) -> None:
        server = self._settings.server
        assert server.openai_port is not None
        self._transport = HttpTransport(
            self._guard,
            server.host,
            server.openai_port,
            uvicorn_options(tls),
            reuse_port=self._reuse_port,
        )
        await self._transport.start()

    async def attach(self, engine: Engine) -> None:
        model_path = str(self._settings.model.path)
        app = await build_app(engine.async_llm, model_path, self._served_name, self._adapters)
        self._guard.attach(app)

    async def stop(self) -> None:
        if self._transport is not None:
            await self._transport.stop()
