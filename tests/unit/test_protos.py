"""The checked-in stubs are exactly what scripts/gen-protos makes, and the wire contract
(packages, services, methods, field numbers and types) is the LeapfrogAI SDK's."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor

from support.paths import REPO
from zarf_vllm.backend.proto.chat import chat_pb2
from zarf_vllm.backend.proto.completion import completion_pb2
from zarf_vllm.backend.proto.counting import counting_pb2
from zarf_vllm.backend.proto.embeddings import embeddings_pb2
from zarf_vllm.backend.proto.name import name_pb2

ROOT = REPO


def test_checked_in_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "gen-protos"), str(tmp_path)], check=True, cwd=ROOT)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert len(generated) == 15
    for relative in generated:
        checked_in = ROOT / "src" / relative
        assert filecmp.cmp(tmp_path / relative, checked_in, shallow=False), (
            f"{checked_in} differs from scripts/gen-protos output: regenerate, never hand-edit"
        )


def test_full_method_paths() -> None:
    paths = {
        f"/{service.full_name}/{method.name}"
        for module in (chat_pb2, completion_pb2, counting_pb2, embeddings_pb2, name_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert paths == {
        "/chat.ChatCompletionService/ChatComplete",
        "/chat.ChatCompletionStreamService/ChatCompleteStream",
        "/completion.CompletionService/Complete",
        "/completion.CompletionStreamService/CompleteStream",
        "/counting.TokenCountService/CountTokens",
        "/embeddings.EmbeddingsService/CreateEmbedding",
        "/name.NameService/Name",
    }
    stream = chat_pb2.DESCRIPTOR.services_by_name["ChatCompletionStreamService"]
    assert stream.methods[0].server_streaming


T = FieldDescriptor
# (number, type, explicit presence) per field, from shared/spec/leapfrogai-grpc.md.
CHAT_REQUEST = {
    "chat_items": (1, T.TYPE_MESSAGE, False), "max_new_tokens": (2, T.TYPE_INT32, False),
    "temperature": (3, T.TYPE_FLOAT, True), "top_k": (4, T.TYPE_FLOAT, True),
    "top_p": (5, T.TYPE_FLOAT, True), "do_sample": (6, T.TYPE_BOOL, True),
    "n": (7, T.TYPE_INT32, True), "stop": (8, T.TYPE_STRING, False),
    "repetition_penalty": (9, T.TYPE_FLOAT, True), "presence_penalty": (10, T.TYPE_FLOAT, True),
    "frequency_penalty": (11, T.TYPE_FLOAT, True), "best_of": (12, T.TYPE_STRING, True),
    "logit_bias": (13, T.TYPE_MESSAGE, False), "return_full_text": (14, T.TYPE_BOOL, True),
    "truncate": (15, T.TYPE_INT32, True), "typical_p": (16, T.TYPE_FLOAT, True),
    "watermark": (17, T.TYPE_BOOL, True), "seed": (18, T.TYPE_INT32, True),
    "user": (19, T.TYPE_STRING, True),
}  # fmt: skip
COMPLETION_REQUEST = {
    "prompt": (1, T.TYPE_STRING, False), "suffix": (2, T.TYPE_STRING, True),
    "max_new_tokens": (3, T.TYPE_INT32, True), "temperature": (4, T.TYPE_FLOAT, True),
    "top_k": (5, T.TYPE_INT32, True), "top_p": (6, T.TYPE_FLOAT, True),
    "do_sample": (7, T.TYPE_BOOL, True), "n": (8, T.TYPE_INT32, True),
    "logprobs": (9, T.TYPE_INT32, True), "echo": (10, T.TYPE_BOOL, True),
    "stop": (11, T.TYPE_STRING, False), "repetition_penalty": (12, T.TYPE_FLOAT, True),
    "presence_penalty": (13, T.TYPE_FLOAT, True), "frequence_penalty": (14, T.TYPE_FLOAT, True),
    "best_of": (15, T.TYPE_STRING, True), "logit_bias": (16, T.TYPE_MESSAGE, False),
    "return_full_text": (17, T.TYPE_BOOL, True), "truncate": (18, T.TYPE_INT32, True),
    "typical_p": (19, T.TYPE_FLOAT, True), "watermark": (20, T.TYPE_BOOL, True),
    "seed": (21, T.TYPE_INT32, True), "user": (22, T.TYPE_STRING, True),
}  # fmt: skip


def _fields(message) -> dict[str, tuple[int, int, bool]]:
    return {
        f.name: (f.number, f.type, f.has_presence and f.containing_oneof is not None)
        for f in message.DESCRIPTOR.fields
    }


def test_request_fields_match_the_contract() -> None:
    assert _fields(chat_pb2.ChatCompletionRequest) == CHAT_REQUEST
    assert _fields(completion_pb2.CompletionRequest) == COMPLETION_REQUEST


def test_response_messages_and_enums_match_the_contract() -> None:
    numbers = lambda m: {f.name: f.number for f in m.DESCRIPTOR.fields}  # noqa: E731
    assert numbers(chat_pb2.ChatCompletionResponse) == {
        "id": 1, "object": 2, "created": 3, "choices": 4, "usage": 5,
    }  # fmt: skip
    assert numbers(chat_pb2.ChatCompletionChoice) == {
        "index": 1,
        "chat_item": 2,
        "finish_reason": 3,
    }
    assert numbers(chat_pb2.Usage) == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }
    assert numbers(completion_pb2.CompletionResponse) == {"choices": 1, "usage": 2}
    assert numbers(completion_pb2.CompletionChoice) == {"text": 1, "index": 2, "finish_reason": 3}
    assert numbers(embeddings_pb2.EmbeddingRequest) == {"inputs": 1}
    assert numbers(embeddings_pb2.EmbeddingResponse) == {"embeddings": 1}
    assert numbers(counting_pb2.TokenCountResponse) == {"count": 1}
    assert numbers(name_pb2.NameResponse) == {"name": 1}
    assert dict(chat_pb2.ChatRole.items()) == {
        "USER": 0,
        "SYSTEM": 1,
        "FUNCTION": 2,
        "ASSISTANT": 3,
    }
    assert dict(chat_pb2.ChatCompletionFinishReason.items()) == {"NONE": 0, "STOP": 1, "LENGTH": 2}
    assert dict(completion_pb2.CompletionFinishReason.items()) == {
        "NONE": 0,
        "STOP": 1,
        "LENGTH": 2,
    }
