"""A plaintext port that answers only grpc.health.v1.Health, for when the gRPC port is TLS.

Kubernetes' gRPC probes connect without TLS (kubelet has no way to be given a CA or a client
certificate), so a TLS-only gRPC port would fail every probe. A tcpSocket probe would pass
while the model still loads, and an exec probe would start a Python client every few
seconds. This port serves the very same HealthServicer as the TLS port, so the probes keep
their meaning (SERVING only after the warm-up, NOT_SERVING while draining), and it serves
nothing else: no RPC of the contract and no reflection, which would list them.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1._async import HealthServicer


class PlainHealthPort:
    def __init__(self, health: HealthServicer) -> None:
        self._server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health, self._server)
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        address = f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address} (tls.health_port): is the port taken?")
        await self._server.start()
        return self.port

    async def stop(self) -> None:
        await self._server.stop(grace=None)
