"""The LeapfrogAI services on one gRPC server: what the model's port and each LoRA adapter's
port (adapter_servers.py) both serve, with health and reflection."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from zarf_vllm.backend.calls import CallTracker
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
from zarf_vllm.backend.proto.completion import completion_pb2, completion_pb2_grpc
from zarf_vllm.backend.proto.counting import counting_pb2, counting_pb2_grpc
from zarf_vllm.backend.proto.embeddings import embeddings_pb2, embeddings_pb2_grpc
from zarf_vllm.backend.proto.name import name_pb2, name_pb2_grpc
from zarf_vllm.backend.runtime import Runtime
from zarf_vllm.backend.services.chat import ChatService
from zarf_vllm.backend.services.completion import CompletionService
from zarf_vllm.backend.services.counting import TokenCountService
from zarf_vllm.backend.services.embeddings import EmbeddingsService
from zarf_vllm.backend.services.name import NameService
from zarf_vllm.backend.wire import MalformedRequests


def full_name(pb2_module: object, service: str) -> str:
    return pb2_module.DESCRIPTOR.services_by_name[service].full_name  # type: ignore[attr-defined]


def new_server(options: Sequence[tuple[str, int]]) -> grpc.aio.Server:
    """A gRPC server whose undecodable requests answer INVALID_ARGUMENT (wire.py)."""
    return grpc.aio.server(interceptors=[MalformedRequests()], options=list(options))


def add_services(
    server: grpc.aio.Server,
    runtime: Runtime,
    calls: CallTracker,
    served_name: str,
    health: HealthServicer,
    embeddings: EmbeddingsService | None = None,
) -> tuple[str, ...]:
    """Name and token counting, then embeddings (an embedding model) or chat and completion,
    then health and reflection; returns the full names of the model's services (for health)."""
    name_pb2_grpc.add_NameServiceServicer_to_server(NameService(served_name, calls), server)
    counting_pb2_grpc.add_TokenCountServiceServicer_to_server(
        TokenCountService(runtime, calls), server
    )
    names = [full_name(name_pb2, "NameService"), full_name(counting_pb2, "TokenCountService")]
    if embeddings is not None:
        embeddings_pb2_grpc.add_EmbeddingsServiceServicer_to_server(embeddings, server)
        names.append(full_name(embeddings_pb2, "EmbeddingsService"))
    else:
        chat = ChatService(runtime, calls)
        chat_pb2_grpc.add_ChatCompletionServiceServicer_to_server(chat, server)
        chat_pb2_grpc.add_ChatCompletionStreamServiceServicer_to_server(chat, server)
        completion = CompletionService(runtime, calls)
        completion_pb2_grpc.add_CompletionServiceServicer_to_server(completion, server)
        completion_pb2_grpc.add_CompletionStreamServiceServicer_to_server(completion, server)
        names += [
            full_name(chat_pb2, "ChatCompletionService"),
            full_name(chat_pb2, "ChatCompletionStreamService"),
            full_name(completion_pb2, "CompletionService"),
            full_name(completion_pb2, "CompletionStreamService"),
        ]
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    health_name = full_name(health_pb2, "Health")
    reflection.enable_server_reflection([*names, health_name, reflection.SERVICE_NAME], server)
    return tuple(names)
