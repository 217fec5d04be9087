"""The embedded demo model (SmolLM2-135M-Instruct, built offline and verified) served for real:
answers must make sense, and streamed text must never split a character."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from support.backend_process import BackendProcess
from support.paths import DEMO_MANIFEST
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
from zarf_vllm.backend.proto.completion import completion_pb2, completion_pb2_grpc
from zarf_vllm.backend.proto.name import name_pb2_grpc


@pytest.fixture(scope="module")
def demo_backend(
    demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendProcess]:
    with BackendProcess(
        demo_model_dir,
        tmp_path_factory.mktemp("demo"),
        {
            "model": {"manifest": str(DEMO_MANIFEST), "verify": "full"},
            "engine": {"dtype": "auto", "max_model_len": 4096},
            # Every token its own chunk, so the multi-byte test sees every token boundary.
            "server": {"stream_interval_ms": 0},
        },
    ).serving() as backend:
        yield backend


def ask(backend: BackendProcess, question: str, **fields) -> list[chat_pb2.ChatCompletionResponse]:
    request = chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=question)],
        max_new_tokens=fields.pop("max_new_tokens", 48),
        temperature=0.0,
        **fields,
    )
    with grpc.insecure_channel(backend.address) as channel:
        return list(
            chat_pb2_grpc.ChatCompletionStreamServiceStub(channel).ChatCompleteStream(request)
        )


def test_greedy_chat_knows_the_capital_of_france(demo_backend: BackendProcess) -> None:
    chunks = ask(demo_backend, "What is the capital of France? Answer in one sentence.")
    answer = "".join(c.choices[0].chat_item.content for c in chunks)
    assert "Paris" in answer
    assert chunks[-1].choices[0].finish_reason == chat_pb2.STOP
    assert chunks[-1].usage.completion_tokens > 0


def test_the_manifest_names_the_model(demo_backend: BackendProcess) -> None:
    with grpc.insecure_channel(demo_backend.address) as channel:
        name = name_pb2_grpc.NameServiceStub(channel).Name(
            __import__("google.protobuf.empty_pb2").protobuf.empty_pb2.Empty()
        )
    assert name.name == "smollm2-135m-instruct"


def test_streamed_text_never_splits_a_character(
    demo_backend: BackendProcess, demo_model_dir: Path
) -> None:
    """Byte-level BPE spells emoji and most CJK characters over several tokens; a chunk boundary
    inside one would show up as U+FFFD replacement characters."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    request = completion_pb2.CompletionRequest(
        prompt="🚀 🚀 🚀 🚀 🚀 東京 東京 東京 東京 🚀 🚀 🚀 東京 東京",
        max_new_tokens=40,
        temperature=0.0,
    )
    with grpc.insecure_channel(demo_backend.address) as channel:
        stub = completion_pb2_grpc.CompletionStreamServiceStub(channel)
        pieces = [c.choices[0].text for c in stub.CompleteStream(request)]
    text = "".join(pieces)
    split_chars = {ch for ch in text if len(tokenizer.encode(ch, add_special_tokens=False)) > 1}
    assert split_chars, f"the model wrote no character spelled over several tokens: {text!r}"
    assert "\ufffd" not in text
    assert len(pieces) > 3
