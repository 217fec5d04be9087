"""A small client of the backend's gRPC contract, for operators, the demo and the benchmark."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

ROLES = {
    "user": chat_pb2.USER,
    "system": chat_pb2.SYSTEM,
    "assistant": chat_pb2.ASSISTANT,
    "function": chat_pb2.FUNCTION,
}


@dataclass
class StreamSummary:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float
    duration_s: float


def chat_request(
    messages: list[tuple[str, str]], *, max_new_tokens: int = 128, **sampling: object
) -> chat_pb2.ChatCompletionRequest:
    items = [chat_pb2.ChatItem(role=ROLES[role], content=text) for role, text in messages]
    return chat_pb2.ChatCompletionRequest(
        chat_items=items, max_new_tokens=max_new_tokens, **sampling
    )


def tls_credentials(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """For a backend with TLS (docs/tls.md): the CA to trust, and a client certificate for
    mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes(),
        private_key=None if key_file is None else key_file.read_bytes(),
        certificate_chain=None if cert_file is None else cert_file.read_bytes(),
    )


def open_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)


def wait_until_serving(
    address: str, timeout_s: float, credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Polls the health service until the whole server reports SERVING."""
    deadline = time.monotonic() + timeout_s
    with open_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.5)
    raise TimeoutError(f"{address} did not report SERVING within {timeout_s:.0f}s")


def stream_chat(
    address: str,
    request: chat_pb2.ChatCompletionRequest,
    credentials: grpc.ChannelCredentials | None = None,
) -> Iterator[str | StreamSummary]:
    """Yields each text delta as it arrives, then one StreamSummary."""
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    with open_channel(address, credentials) as channel:
        stub = chat_pb2_grpc.ChatCompletionStreamServiceStub(channel)
        last = None
        for chunk in stub.ChatCompleteStream(request):
            last = chunk
            for choice in chunk.choices:
                if choice.chat_item.content:
                    first = first or time.perf_counter()
                    parts.append(choice.chat_item.content)
                    yield choice.chat_item.content
    assert last is not None, "the stream ended without a chunk"
    reason = chat_pb2.ChatCompletionFinishReason.Name(last.choices[0].finish_reason)
    ended = time.perf_counter()
    yield StreamSummary(
        text="".join(parts),
        finish_reason=reason,
        prompt_tokens=last.usage.prompt_tokens,
        completion_tokens=last.usage.completion_tokens,
        time_to_first_token_s=(first or ended) - started,
        duration_s=ended - started,
    )
