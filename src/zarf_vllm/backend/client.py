"""A small client of the backend's gRPC contract, for operators, the demo and the benchmark."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

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


def wait_until_serving(address: str, timeout_s: float) -> None:
    """Polls the health service until the whole server reports SERVING."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
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
    address: str, request: chat_pb2.ChatCompletionRequest
) -> Iterator[str | StreamSummary]:
    """Yields each text delta as it arrives, then one StreamSummary."""
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    with grpc.insecure_channel(address) as channel:
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
