"""The backend process: the gRPC server, the engine behind it, and their lifecycle.

1. Start the gRPC server at once with every service NOT_SERVING (probes get an answer).
2. Load the engine in a worker thread (the event loop keeps answering health checks).
3. Serve one warm-up request through the same code the services use, then SERVING.
4. On SIGTERM: NOT_SERVING, new calls UNAVAILABLE, calls in flight finish (bounded by the drain
   timeout), the engine stops, exit 0. If the engine dies: NOT_SERVING and exit 1, so
   Kubernetes restarts the pod.

The OpenAI-compatible HTTP API (backend/openai), when its port is set, follows the same steps
on the same engine and the same call tracker: it listens in step 1, is attached in step 3
before SERVING, and stops after the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from zarf_vllm.backend.adapter_servers import AdapterServers
from zarf_vllm.backend.adapters import served_adapters
from zarf_vllm.backend.calls import Call, CallTracker
from zarf_vllm.backend.config import Settings
from zarf_vllm.backend.engine import Engine, EngineDeadError
from zarf_vllm.backend.grpc_services import add_services, new_server
from zarf_vllm.backend.health_port import PlainHealthPort
from zarf_vllm.backend.logs import get_logger, log_event
from zarf_vllm.backend.metrics import Metrics, serve_metrics
from zarf_vllm.backend.openai.frontend import OpenAIFrontend
from zarf_vllm.backend.prompts import Message
from zarf_vllm.backend.runtime import (
    Runtime,
    assemble,
    is_embedding_model,
    openai_sampling_defaults,
    served_name,
)
from zarf_vllm.backend.sampling import SamplingRequest
from zarf_vllm.backend.services.embeddings import EmbeddingsService
from zarf_vllm.backend.tls import grpc_credentials, load_tls
from zarf_vllm.model.manifest import ModelManifest

if TYPE_CHECKING:
    from zarf_vllm.backend.engine_source import EngineSource

logger = get_logger("server")

EXIT_OK = 0
EXIT_ENGINE_DIED = 1


@dataclass(frozen=True)
class ServiceSet:
    """The full names of the services this process serves (for health and reflection)."""

    names: tuple[str, ...]


class BackendServer:
    def __init__(
        self,
        settings: Settings,
        manifest: ModelManifest | None,
        source: EngineSource | None = None,
    ) -> None:
        """`source`: this process is one of several front ends of one engine core, on the same
        ports (frontends.py); None: the engine's client is this process's own."""
        self.settings = settings
        self.source = source
        self.manifest = manifest
        self.is_embedding = is_embedding_model(settings, manifest)
        self.served_name = served_name(settings, manifest)
        self.metrics = Metrics()
        self.calls = CallTracker(
            self.metrics, settings.limits.max_in_flight, settings.server.log_prompts
        )
        self.runtime = Runtime()
        self.health = HealthServicer()
        options = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # The LeapfrogAI API multiplexes its calls over one connection; gRPC's limit
            # on streams per connection would queue calls out of sight of max_in_flight.
            ("grpc.max_concurrent_streams", settings.limits.max_in_flight + 64),
        ]
        if source is not None:
            # Every front end listens on the same ports; the kernel spreads the connections.
            options.append(("grpc.so_reuseport", 1))
        self.server = new_server(options)
        self.services = self._add_services()
        # LoRA adapters: one gRPC port each (backend/adapter_servers.py), model names on OpenAI.
        self.adapters = served_adapters(settings, manifest)
        self.adapter_servers = AdapterServers(self.adapters, self.calls, self.health, options)
        self.openai = (
            None
            if settings.server.openai_port is None
            else OpenAIFrontend(
                settings, self.calls, self.served_name, self.adapters, reuse_port=source is not None
            )
        )
        self.health_port = (
            None if settings.tls.health_port is None else PlainHealthPort(self.health)
        )
        self._stop = asyncio.Event()
        self._exit_code = EXIT_OK
        self.port: int | None = None

    # -- assembly -----------------------------------------------------------------------

    def _add_services(self) -> ServiceSet:
        embeddings = None
        if self.is_embedding:
            limits = self.settings.limits
            embeddings = EmbeddingsService(
                self.runtime, self.calls, limits.max_embedding_inputs, limits.embedding_overflow
            )
        names = add_services(
            self.server, self.runtime, self.calls, self.served_name, self.health, embeddings
        )
        return ServiceSet(names)

    async def _set_health(self, status: int) -> None:
        for name in ("", *self.services.names):
            await self.health.set(name, status)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Listens at once; every service reports NOT_SERVING until `load()` has finished."""
        server_settings = self.settings.server
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{server_settings.host}:{server_settings.port}"
        # With TLS set, both APIs serve TLS only (commands/serve.py checked the files already).
        tls = load_tls(self.settings.tls)
        if tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, grpc_credentials(tls))
        if self.port == 0:
            raise OSError(f"cannot listen on {address}: is the port taken?")
        await self.server.start()
        if self.health_port is not None:
            assert self.settings.tls.health_port is not None
            await self.health_port.start(server_settings.host, self.settings.tls.health_port)
        adapter_ports = await self.adapter_servers.start(
            server_settings.host,
            server_settings.port,
            None if tls is None else grpc_credentials(tls),
        )
        if self.openai is not None:
            await self.openai.start(tls)
        metrics_port = None
        if server_settings.metrics_port is not None:
            metrics_port = serve_metrics(server_settings.host, server_settings.metrics_port)
        if self.source is not None:
            self.source.listening()
        log_event(
            logger,
            # With several front ends the supervisor logs the pod's one "listening" line.
            "listening" if self.source is None else "front end listening",
            port=self.port,
            metrics_port=metrics_port,
            openai_port=None if self.openai is None else self.openai.port,
            tls=tls is not None,
            health_port=None if self.health_port is None else self.health_port.port,
            services=list(self.services.names),
            adapter_ports=adapter_ports,
        )

    async def load(self) -> None:
        """Loads the engine off the event loop, warms it up, then reports SERVING."""
        log_event(logger, "loading model", path=str(self.settings.model.path))
        defaults = openai_sampling_defaults(self.settings, self.manifest) if self.openai else None
        if self.source is not None:
            await self.source.wait_for_engine()
        engine = await asyncio.to_thread(
            Engine.start, self.settings, self.is_embedding, defaults, self.adapters, self.source
        )
        assemble(self.runtime, engine, self.settings, self.manifest)
        self.adapter_servers.attach(engine, self.settings, self.manifest)
        self.metrics.watch_engine(engine.unfinished_requests)
        if self.settings.server.warmup:
            await self._warm_up(engine)
        if self.openai is not None:
            await self.openai.attach(engine)
        if self.source is not None:
            await self.source.ready_to_serve()
        self.calls.accepting = True
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log_event(
            logger, "serving", model=self.served_name, max_model_len=engine.facts.max_model_len
        )

    async def _warm_up(self, engine: Engine) -> None:
        """One real request through the serving path, so the first client pays no first-use cost."""
        if self.is_embedding:
            await engine.embed([await engine.tokenize("warm-up", add_special_tokens=True)])
            return
        prompts = self.runtime.require_prompts()
        generator = self.runtime.require_generator()
        prompt = prompts.render([Message("user", "Hello")])
        prepared = await generator.prepare(
            prompt, SamplingRequest(max_new_tokens=2), add_special_tokens=False, truncate=None
        )
        await generator.complete(prepared, Call(method="warm-up", request_id="warm-up"))

    async def watch_engine(self) -> None:
        """Polls the engine's health; a dead engine stops the process with a failure code."""
        interval = self.settings.server.engine_check_interval_s
        engine = self.runtime.require_engine()
        while not self._stop.is_set():
            died = asyncio.create_task(self.calls.engine_died.wait())
            try:
                await asyncio.wait({died}, timeout=interval)
            finally:
                died.cancel()
            try:
                if self.calls.engine_died.is_set():
                    raise EngineDeadError("a call found the engine dead")
                await engine.check_health()
            except EngineDeadError as exc:
                log_event(logger, "engine died; exiting so the pod restarts", error=str(exc))
                self._exit_code = EXIT_ENGINE_DIED
                await self.health.enter_graceful_shutdown()
                self._stop.set()
                return

    def request_stop(self) -> None:
        """Called on SIGTERM/SIGINT: drain and exit 0."""
        if self._stop.is_set():
            return
        log_event(logger, "stop requested; draining", in_flight=self.calls.in_flight)
        self._stop.set()

    async def wait_for_stop(self) -> None:
        await self._stop.wait()

    async def drain_and_stop(self) -> int:
        """Refuses new calls, lets calls in flight finish, then stops everything."""
        self.calls.draining = True
        await self.health.enter_graceful_shutdown()
        timeout = self.settings.limits.drain_timeout_s
        if self._exit_code == EXIT_OK:
            try:
                async with asyncio.timeout(timeout):
                    await self.calls.wait_idle()
            except TimeoutError:
                log_event(
                    logger,
                    "drain timeout passed; cancelling calls",
                    in_flight=self.calls.in_flight,
                    timeout_s=timeout,
                )
        await self.server.stop(grace=1.0)
        await self.adapter_servers.stop(grace=1.0)
        await self.stop_openai()
        if self.runtime.engine is not None:
            self.runtime.engine.shutdown()
        log_event(logger, "stopped", exit_code=self._exit_code)
        return self._exit_code

    async def stop_openai(self) -> None:
        """Stops the listeners beside gRPC: the OpenAI port, then the plaintext health port."""
        if self.openai is not None:
            await self.openai.stop()
        # The probes' port goes last, so they see NOT_SERVING rather than a refused connection.
        if self.health_port is not None:
            await self.health_port.stop()


async def run(
    settings: Settings, manifest: ModelManifest | None, source: EngineSource | None = None
) -> int:
    """Runs the backend until SIGTERM (exit 0) or engine death (exit 1)."""
    backend = BackendServer(settings, manifest, source)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, backend.request_stop)
    await backend.start()
    loading = asyncio.create_task(backend.load())
    stopping = asyncio.create_task(backend.wait_for_stop())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is None:
        watcher = asyncio.create_task(backend.watch_engine())
        await stopping
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    elif loading.done():
        stopping.cancel()
        await backend.server.stop(grace=None)
        await backend.adapter_servers.stop(grace=None)
        await backend.stop_openai()
        raise loading.exception()  # type: ignore[misc]
    else:
        # Stopped while loading: nothing is in flight, there is nothing to drain.
        loading.cancel()
    return await backend.drain_and_stop()
