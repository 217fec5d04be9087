"""One gRPC server per LoRA adapter, on the same engine: the LeapfrogAI contract for adapters.

LeapfrogAI's requests name no model, and its API reaches each model at a "host:port" of its
own (models.toml), so an adapter is a port: the same chat, completion, token-count and name
services as the model's port, generating through the adapter's weights and naming the adapter.
They share the backend's call tracker (one cap, one drain) and its health servicer (the same
SERVING / NOT_SERVING), and follow the model port's lifecycle in `server.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1._async import HealthServicer

from zarf_vllm.backend.adapters import ServedAdapter, adapter_port
from zarf_vllm.backend.calls import CallTracker
from zarf_vllm.backend.config import Settings
from zarf_vllm.backend.engine import Engine
from zarf_vllm.backend.grpc_services import add_services, new_server
from zarf_vllm.backend.runtime import Runtime, assemble
from zarf_vllm.model.manifest import ModelManifest


class AdapterServer:
    """The gRPC server of one adapter; calls are refused (by the tracker) until `attach`."""

    def __init__(
        self,
        adapter: ServedAdapter,
        calls: CallTracker,
        health: HealthServicer,
        options: Sequence[tuple[str, int]],
    ) -> None:
        self.adapter = adapter
        self.runtime = Runtime()
        self.server = new_server(options)
        self.port: int | None = None
        add_services(self.server, self.runtime, calls, adapter.name, health)

    async def start(
        self, host: str, port: int, credentials: grpc.ServerCredentials | None = None
    ) -> int:
        """Listens on `port`, with TLS when the model's port has it (the same credentials)."""
        address = f"{host}:{port}"
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port} for adapter {self.adapter.name}")
        await self.server.start()
        return self.port

    def attach(self, engine: Engine, settings: Settings, manifest: ModelManifest | None) -> None:
        """The model's runtime (same prompts, limits, sampling defaults) on the adapter's view
        of the engine."""
        assemble(self.runtime, engine.for_adapter(self.adapter), settings, manifest)

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace=grace)


class AdapterServers:
    """Every adapter's server, started, attached and stopped together."""

    def __init__(
        self,
        adapters: Sequence[ServedAdapter],
        calls: CallTracker,
        health: HealthServicer,
        options: Sequence[tuple[str, int]],
    ) -> None:
        self.servers = [AdapterServer(a, calls, health, options) for a in adapters]

    async def start(
        self, host: str, model_port: int, credentials: grpc.ServerCredentials | None = None
    ) -> dict[str, int]:
        """Listens on each adapter's port; returns {adapter name: port}."""
        return {
            s.adapter.name: await s.start(host, adapter_port(model_port, index), credentials)
            for index, s in enumerate(self.servers)
        }

    def attach(self, engine: Engine, settings: Settings, manifest: ModelManifest | None) -> None:
        for server in self.servers:
            server.attach(engine, settings, manifest)

    async def stop(self, grace: float | None) -> None:
        for server in self.servers:
            await server.stop(grace)
