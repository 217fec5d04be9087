"""The gRPC services end to end in-process: the real BackendServer on the scripted fake engine.

Each test runs the server the pod runs (BackendServer: services, call tracking, health,
warm-up) on 127.0.0.1, with only `Engine.start` replaced so that it returns a real `Engine`
on `FakeAsyncLLM`, and talks to it with a real grpc.aio client. A real server rather than
servicer methods called with a fake context: cancellation, deadlines and aborts are gRPC's
behaviour (a cancelled call's task is cancelled, `context.abort` raises AbortError, a stream's
generator is closed), and calls.py relies on exactly that; a fake context would only repeat
our assumptions about it. It costs milliseconds per server.

tests/engine/test_server_rpcs.py asserts the same contract against the real vLLM engine.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

import zarf_vllm.backend.server as server_module
from support.fake_engine import (
    EMBEDDING_DIM,
    FakeAsyncLLM,
    Script,
    embedding_of,
    make_engine,
    tiny_tokenizer,
)
from zarf_vllm.backend.config import load_settings
from zarf_vllm.backend.engine import Engine
from zarf_vllm.backend.metrics import Metrics
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
from zarf_vllm.backend.proto.completion import completion_pb2, completion_pb2_grpc
from zarf_vllm.backend.proto.counting import counting_pb2, counting_pb2_grpc
from zarf_vllm.backend.proto.embeddings import embeddings_pb2, embeddings_pb2_grpc
from zarf_vllm.backend.proto.name import name_pb2_grpc
from zarf_vllm.backend.server import BackendServer
from zarf_vllm.model.manifest import ModelManifest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SERVED_NAME = "fake-model"
MODEL_STOP = "###"  # the chat settings' stop string, added to every request's
UNICODE_TEXT = "Zürich, 東京 and 🚀 are here."
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Served:
    backend: BackendServer
    fake: FakeAsyncLLM
    channel: grpc.aio.Channel
    registry: CollectorRegistry

    def metric(self, name: str, **labels: str) -> float:
        # Exact label sets: every call metric names its API, here gRPC.
        return self.registry.get_sample_value(name, {"api": "grpc", **labels}) or 0.0

    def chat(self) -> chat_pb2_grpc.ChatCompletionServiceStub:
        return chat_pb2_grpc.ChatCompletionServiceStub(self.channel)

    def chat_stream(self) -> chat_pb2_grpc.ChatCompletionStreamServiceStub:
        return chat_pb2_grpc.ChatCompletionStreamServiceStub(self.channel)

    def completion(self) -> completion_pb2_grpc.CompletionServiceStub:
        return completion_pb2_grpc.CompletionServiceStub(self.channel)

    def completion_stream(self) -> completion_pb2_grpc.CompletionStreamServiceStub:
        return completion_pb2_grpc.CompletionStreamServiceStub(self.channel)

    async def health(self) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return (await stub.Check(health_pb2.HealthCheckRequest(service=""))).status


Serve = Callable[..., Awaitable[Served]]


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and key in base else value
    return merged


@pytest.fixture
async def serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Serve]:
    """Starts BackendServer on the fake engine: `await serve(script=..., settings={...})`."""
    for name in [n for n in os.environ if n.startswith("BACKEND_")]:
        monkeypatch.delenv(name)
    started: list[Served] = []

    async def start(
        script: Script | None = None,
        *,
        settings: dict[str, Any] | None = None,
        max_model_len: int = 256,
        per_request_seed: bool = True,
        embedding: bool = False,
        load: bool = True,
        manifest: ModelManifest | None = None,
        tokenizer: PreTrainedTokenizerFast | None = None,
    ) -> Served:
        base = {
            "model": {
                "path": str(tmp_path),
                "name": SERVED_NAME,
                "task": "embed" if embedding else "generate",
            },
            "server": {
                "host": "127.0.0.1",
                "port": 0,
                "metrics_port": None,
                "openai_port": None,  # the OpenAI API needs vLLM's real engine (tests/engine)
                "stream_interval_ms": 0,  # one chunk per engine output: countable
                "engine_check_interval_s": 0.05,
            },
            "limits": {"max_n": 4, "max_embedding_inputs": 4},
            "chat": {"stop": [MODEL_STOP]},
        }
        config = load_settings(None, _merge(base, settings or {}))
        # The warm-up runs on the default script, which finishes.
        fake = FakeAsyncLLM(tokenizer=tokenizer)
        engine = make_engine(
            fake,
            max_model_len=max_model_len,
            is_embedding=embedding,
            per_request_seed=per_request_seed,
        )
        # The one seam: loading the model returns the engine on the fake.
        monkeypatch.setattr(Engine, "start", staticmethod(lambda *args, **kwargs: engine))
        # A registry per server: the default one allows one BackendServer per process.
        registry = CollectorRegistry()
        monkeypatch.setattr(server_module, "Metrics", lambda: Metrics(registry))
        backend = BackendServer(config, manifest)
        await backend.start()
        served = Served(
            backend, fake, grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}"), registry
        )
        started.append(served)
        if load:
            await backend.load()
        fake.script = script or Script()
        return served

    yield start
    for served in started:
        await served.channel.close()
        await served.backend.server.stop(None)


def chat_request(text: str = "Hello there", **fields: Any) -> chat_pb2.ChatCompletionRequest:
    fields.setdefault("max_new_tokens", 64)
    return chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=text)], **fields
    )


def rendered_chat_ids(text: str) -> list[int]:
    """The prompt the chat services must send: the template's text, no BOS added on top."""
    tokenizer = tiny_tokenizer()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer.encode(prompt, add_special_tokens=False)


def tokens(text: str) -> list[int]:
    return tiny_tokenizer().encode(text, add_special_tokens=False)


async def eventually(predicate: Callable[[], object], seconds: float = 3.0) -> None:
    """Polls: the state watched belongs to the code under test, which offers no event."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def request_id(chunk: chat_pb2.ChatCompletionResponse) -> str:
    return chunk.id.removeprefix("chatcmpl-")


# -- lifecycle, name, counting ------------------------------------------------------------


async def test_calls_wait_for_the_model_and_health_follows_loading(serve: Serve) -> None:
    served = await serve(load=False)
    assert await served.health() == NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await name_pb2_grpc.NameServiceStub(served.channel).Name(empty_pb2.Empty())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "loading" in caught.value.details()

    await served.backend.load()
    assert await served.health() == SERVING
    # The warm-up went through the engine before SERVING.
    [warm_up] = served.fake.requests
    assert warm_up.params.max_tokens == 2 and warm_up.finished


async def test_name_service_reports_the_served_name(serve: Serve) -> None:
    served = await serve()
    response = await name_pb2_grpc.NameServiceStub(served.channel).Name(empty_pb2.Empty())
    assert response.name == SERVED_NAME


async def test_count_tokens_counts_the_texts_own_tokens(serve: Serve) -> None:
    served = await serve()
    stub = counting_pb2_grpc.TokenCountServiceStub(served.channel)
    # What makes the check below tell the two apart: a prompt's encoding adds a BOS.
    assert len(tiny_tokenizer().encode("Paris")) == len(tokens("Paris")) + 1
    for text in ("", "The capital of France is Paris.", UNICODE_TEXT, "Paris. " * 1000):
        count = (await stub.CountTokens(counting_pb2.TokenCountRequest(text=text))).count
        assert count == len(tokens(text)), text[:40]


# -- chat ---------------------------------------------------------------------------------


async def test_chat_stream_chunks_follow_the_contract(serve: Serve) -> None:
    served = await serve(Script(texts=(UNICODE_TEXT,)))
    chunks = [c async for c in served.chat_stream().ChatCompleteStream(chat_request())]

    engine_request = served.fake.request(request_id(chunks[0]))
    assert engine_request.textless_outputs > 0  # outputs without text were sent, and dropped
    *body, last = chunks
    assert body
    for chunk in body:
        [choice] = chunk.choices
        assert choice.finish_reason == chat_pb2.NONE
        assert choice.chat_item.content  # no empty chunks
        assert choice.chat_item.role == chat_pb2.ASSISTANT
        assert not chunk.HasField("usage")
    [final] = last.choices
    assert final.finish_reason == chat_pb2.STOP
    assert last.usage.prompt_tokens == len(rendered_chat_ids("Hello there"))
    assert last.usage.completion_tokens == len(tokens(UNICODE_TEXT)) + 1  # and end-of-sequence
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert "".join(c.choices[0].chat_item.content for c in chunks) == UNICODE_TEXT


async def test_chat_complete_answers_the_same_text_in_one_response(serve: Serve) -> None:
    served = await serve(Script(texts=(UNICODE_TEXT,)))
    response = await served.chat().ChatComplete(chat_request())
    assert response.object == "chat.completion"
    [choice] = response.choices
    assert choice.chat_item.content == UNICODE_TEXT
    assert choice.finish_reason == chat_pb2.STOP
    assert response.usage.completion_tokens == len(tokens(UNICODE_TEXT)) + 1
    # The chat template's text goes to the engine as is: no BOS on top of the template.
    assert served.fake.request(request_id(response)).prompt_ids == rendered_chat_ids("Hello there")


async def test_chat_runs_to_max_new_tokens_with_length(serve: Serve) -> None:
    served = await serve(Script(finish="length"))
    response = await served.chat().ChatComplete(chat_request(max_new_tokens=12))
    assert response.choices[0].finish_reason == chat_pb2.LENGTH
    assert response.usage.completion_tokens == 12


# -- completion ---------------------------------------------------------------------------


async def test_completion_stream_with_several_choices(serve: Serve) -> None:
    texts = ("alpha beta", "The capital of Italy is Rome.", "gamma")
    served = await serve(Script(texts=texts))
    request = completion_pb2.CompletionRequest(
        prompt="Once upon a time", max_new_tokens=32, n=3, temperature=1.0
    )
    chunks = [c async for c in served.completion_stream().CompleteStream(request)]

    by_index: dict[int, list[completion_pb2.CompletionChoice]] = {}
    for chunk in chunks:
        assert chunk.choices  # no empty chunks
        for choice in chunk.choices:
            by_index.setdefault(choice.index, []).append(choice)
    assert sorted(by_index) == [0, 1, 2]
    for index, choices in by_index.items():
        assert "".join(c.text for c in choices) == texts[index]
        reasons = [c.finish_reason for c in choices]
        assert reasons == [completion_pb2.NONE] * (len(reasons) - 1) + [completion_pb2.STOP]
    assert [c.HasField("usage") for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].usage.completion_tokens == sum(len(tokens(t)) + 1 for t in texts)


async def test_stop_strings_reach_the_engine_and_end_with_stop(serve: Serve) -> None:
    served = await serve(Script(texts=("Paris is the capital of France.",), finish="length"))
    request = completion_pb2.CompletionRequest(prompt="Say it", max_new_tokens=32, stop=["capital"])
    response = await served.completion().Complete(request)
    # The request's stop strings first, then the model's from the chat settings.
    assert served.fake.requests[-1].params.stop == ["capital", MODEL_STOP]
    [choice] = response.choices
    assert choice.finish_reason == completion_pb2.STOP
    assert choice.text == "Paris is the "
    chunks = [c async for c in served.completion_stream().CompleteStream(request)]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Paris is the "
    assert chunks[-1].choices[-1].finish_reason == completion_pb2.STOP


async def test_max_new_tokens_is_clamped_to_the_context(serve: Serve) -> None:
    served = await serve(Script(finish="length"), max_model_len=64)
    prompt = "The capital of France is Paris."
    request = completion_pb2.CompletionRequest(prompt=prompt, max_new_tokens=5000)
    response = await served.completion().Complete(request)
    prompt_tokens = len(tiny_tokenizer().encode(prompt))  # completions add the BOS
    assert response.usage.prompt_tokens == prompt_tokens
    assert response.choices[0].finish_reason == completion_pb2.LENGTH
    assert response.usage.completion_tokens == 64 - prompt_tokens


async def test_truncate_keeps_the_end_of_the_prompt(serve: Serve) -> None:
    served = await serve()
    prompt = "The capital of France is Paris. " * 10
    request = completion_pb2.CompletionRequest(prompt=prompt, max_new_tokens=4, truncate=6)
    response = await served.completion().Complete(request)
    assert response.usage.prompt_tokens == 6
    assert served.fake.requests[-1].prompt_ids == tiny_tokenizer().encode(prompt)[-6:]


async def test_echo_puts_the_prompt_once_in_front_of_each_choice(serve: Serve) -> None:
    served = await serve(Script(texts=("one two", "three")))
    request = completion_pb2.CompletionRequest(
        prompt="Echo me:", max_new_tokens=8, n=2, temperature=1.0, echo=True
    )
    response = await served.completion().Complete(request)
    assert sorted(c.text for c in response.choices) == ["Echo me:one two", "Echo me:three"]
    chunks = [c async for c in served.completion_stream().CompleteStream(request)]
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "Echo me:one two", 1: "Echo me:three"}


# -- invalid requests ---------------------------------------------------------------------

INVALID_CHAT = [
    ("chat_items", dict(chat_items=[])),
    ("chat_items", dict(chat_items=[chat_pb2.ChatItem(role=7, content="hi")])),
    ("max_new_tokens", dict(max_new_tokens=-1)),  # 0 is unset, the default; below it refused
    ("top_p", dict(top_p=1.5)),
    ("n", dict(n=99)),
    ("stop", dict(stop=[""])),
    ("logit_bias", dict(logit_bias={"999999": 1})),
    ("truncate", dict(truncate=0)),
    ("prompt", dict(chat_items=[chat_pb2.ChatItem(content="Paris " * 300)])),
]


async def test_invalid_chat_requests_get_invalid_argument_naming_the_field(serve: Serve) -> None:
    served = await serve(max_model_len=128)
    for field, fields in INVALID_CHAT:
        request = chat_pb2.ChatCompletionRequest(
            **{"chat_items": [chat_pb2.ChatItem(content="hi")], "max_new_tokens": 4, **fields}
        )
        for call in (
            served.chat().ChatComplete,
            lambda r: _drain(served.chat_stream().ChatCompleteStream(r)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert caught.value.details().startswith(f"{field}:"), caught.value.details()
    assert len(served.fake.requests) == 1  # the warm-up only: nothing invalid reached it
    assert served.metric(
        "backend_requests_total", method="ChatComplete", code="INVALID_ARGUMENT"
    ) == len(INVALID_CHAT)
    assert (await served.chat().ChatComplete(chat_request())).choices  # still serving


async def test_invalid_completion_requests_get_invalid_argument(serve: Serve) -> None:
    served = await serve(per_request_seed=False)  # as on the CPU engine
    for field, fields in [
        ("max_new_tokens", dict(prompt="x", max_new_tokens=-1)),
        ("top_k", dict(prompt="x", top_k=-5)),
        ("frequency_penalty", dict(prompt="x", frequence_penalty=9)),  # the proto's spelling
        ("seed", dict(prompt="x", seed=1)),
    ]:
        request = completion_pb2.CompletionRequest(**fields)
        for call in (
            served.completion().Complete,
            lambda r: _drain(served.completion_stream().CompleteStream(r)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details().startswith(f"{field}:"), caught.value.details()
    assert len(served.fake.requests) == 1


async def test_an_empty_completion_prompt_is_refused_whatever_the_tokenizer(serve: Serve) -> None:
    served = await serve()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.completion().Complete(completion_pb2.CompletionRequest(prompt=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("prompt:")


async def test_a_seed_reaches_the_engine_where_it_can_honour_it(serve: Serve) -> None:
    served = await serve(per_request_seed=True)
    await served.completion().Complete(
        completion_pb2.CompletionRequest(prompt="x", max_new_tokens=2, seed=7)
    )
    assert served.fake.requests[-1].params.seed == 7


async def _drain(call: Any) -> list[Any]:
    return [item async for item in call]


# -- cancellation, overload, failures -----------------------------------------------------


async def test_a_cancelled_stream_aborts_its_engine_request(serve: Serve) -> None:
    served = await serve(Script(finish="length", stall_after=3))
    call = served.chat_stream().ChatCompleteStream(chat_request(max_new_tokens=100))
    first = await call.read()
    engine_request = served.fake.request(request_id(first))
    await eventually(engine_request.stalled.is_set)
    assert served.fake.get_num_unfinished_requests() == 1
    call.cancel()

    await eventually(lambda: served.fake.get_num_unfinished_requests() == 0)
    assert served.fake.aborted == [engine_request.request_id]
    await eventually(
        lambda: (
            served.metric("backend_requests_total", method="ChatCompleteStream", code="CANCELLED")
            == 1
        )
    )
    assert served.backend.calls.in_flight == 0


async def test_a_passed_deadline_aborts_the_request(serve: Serve) -> None:
    served = await serve(Script(stall_after=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.chat().ChatComplete(chat_request(), timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: served.fake.get_num_unfinished_requests() == 0)
    [_warm_up, timed_out] = served.fake.requests
    assert served.fake.aborted == [timed_out.request_id]


async def test_past_the_cap_calls_get_resource_exhausted_at_once(serve: Serve) -> None:
    # Stalled after a few tokens: enough for a first chunk past the stop-string hold-back.
    served = await serve(Script(stall_after=4), settings={"limits": {"max_in_flight": 2}})
    streams = [served.chat_stream().ChatCompleteStream(chat_request()) for _ in range(2)]
    for stream in streams:
        await stream.read()
    await eventually(lambda: served.backend.calls.in_flight == 2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.chat().ChatComplete(chat_request())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Cheap calls bypass the cap.
    assert (await name_pb2_grpc.NameServiceStub(served.channel).Name(empty_pb2.Empty())).name
    for stream in streams:
        stream.cancel()
    await eventually(lambda: served.fake.get_num_unfinished_requests() == 0)


async def test_engine_death_mid_stream_is_unavailable_and_stops_the_server(serve: Serve) -> None:
    served = await serve(Script(finish="length", die_after=3, step_s=0.01))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in served.chat_stream().ChatCompleteStream(chat_request(max_new_tokens=50)):
            received.append(chunk)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "engine has stopped" in caught.value.details()
    # What was sent before the death arrives (outputs the engine had not handed over yet
    # are lost with it, as in vLLM, hence no exact count).
    assert 1 <= len(received) <= 3
    streamed = "".join(c.choices[0].chat_item.content for c in received)
    assert streamed and "Paris is the capital of France.".startswith(streamed)
    assert served.backend.calls.engine_died.is_set()

    # The watcher sees it, reports NOT_SERVING and stops the process with exit code 1.
    await asyncio.wait_for(served.backend.watch_engine(), timeout=2)
    assert await served.health() == NOT_SERVING
    assert await served.backend.drain_and_stop() == 1
    assert served.fake.shut_down


async def test_an_engine_error_is_internal_and_frees_the_slot(serve: Serve) -> None:
    served = await serve(Script(finish="length", fail_after=2))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.chat().ChatComplete(chat_request())
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error: RuntimeError"
    assert served.fake.aborted == [served.fake.requests[-1].request_id]
    assert not served.backend.calls.engine_died.is_set()
    assert await served.health() == SERVING


async def test_an_aborted_finish_is_internal_not_a_short_answer(serve: Serve) -> None:
    served = await serve(Script(texts=("cut short",), finish="abort"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _drain(
            served.completion_stream().CompleteStream(
                completion_pb2.CompletionRequest(prompt="x", max_new_tokens=32)
            )
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL


async def test_request_bytes_that_do_not_parse_are_invalid_argument(serve: Serve) -> None:
    served = await serve()
    corrupt = b"\x0a\xff\xff\xff\xff\x0f"  # a length-delimited field longer than the message
    unary = served.channel.unary_unary("/chat.ChatCompletionService/ChatComplete")
    stream = served.channel.unary_stream("/completion.CompletionStreamService/CompleteStream")
    for call in (unary(corrupt), _drain(stream(corrupt))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a valid protobuf message" in caught.value.details()
    # Nothing reached the engine (only the warm-up did), and well-formed calls still work.
    assert len(served.fake.requests) == 1
    assert (await served.chat().ChatComplete(chat_request())).choices[0].chat_item.content
    assert await served.health() == SERVING


# -- embeddings ---------------------------------------------------------------------------


async def test_embeddings_have_one_vector_per_input_in_order(serve: Serve) -> None:
    served = await serve(embedding=True)
    inputs = ["a", "The capital of France", UNICODE_TEXT]
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(served.channel)
    response = await stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=inputs))
    vectors = [list(e.embedding) for e in response.embeddings]
    assert [len(v) for v in vectors] == [EMBEDDING_DIM] * len(inputs)
    # The fake's first component is the input's token count, BOS included.
    assert [v[0] for v in vectors] == [len(tiny_tokenizer().encode(t)) for t in inputs]
    assert served.fake.max_concurrent_encodes == len(inputs)


async def test_bad_embedding_requests_get_invalid_argument(serve: Serve) -> None:
    served = await serve(embedding=True, max_model_len=16)
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(served.channel)
    for inputs, message in [
        ([], "inputs: must hold at least one string"),
        (["x"] * 5, "inputs: at most 4 strings per call, got 5"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=inputs))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(message), caught.value.details()
    assert served.fake.encoded == [tiny_tokenizer().encode("warm-up")]  # nothing else reached it


async def test_each_model_kind_serves_only_its_own_services(serve: Serve) -> None:
    embedding = await serve(embedding=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embedding.chat().ChatComplete(chat_request())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

    generation = await serve()
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(generation.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=["x"]))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- the LeapfrogAI API's request shapes (v0.14.0) ----------------------------------------
# What the API sends, field for field: chat carries only chat_items, max_new_tokens (0 for
# `"max_tokens": null`) and temperature (1.0 unless null); completions prompt, max_new_tokens and
# temperature; embeddings up to 500 inputs per call (RAG indexing), some longer than the model's
# limit. The API shows every gRPC error as a bare HTTP 500, so each of these must succeed.


def leapfrogai_chat(text: str = "Hello there") -> chat_pb2.ChatCompletionRequest:
    return chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=text)],
        max_new_tokens=0,
        temperature=1.0,
    )


async def test_leapfrogai_chat_with_max_tokens_null_gets_the_configured_default(
    serve: Serve,
) -> None:
    served = await serve(
        Script(finish="length"), settings={"sampling": {"max_new_tokens": 24}}, max_model_len=1024
    )
    request = leapfrogai_chat()
    response = await served.chat().ChatComplete(request)
    [choice] = response.choices
    assert choice.finish_reason == chat_pb2.LENGTH
    assert response.usage.completion_tokens == 24
    params = served.fake.request(request_id(response)).params
    assert (params.max_tokens, params.temperature) == (24, 1.0)

    chunks = [c async for c in served.chat_stream().ChatCompleteStream(request)]
    assert chunks[-1].choices[-1].finish_reason == chat_pb2.LENGTH
    assert chunks[-1].usage.completion_tokens == 24


async def test_max_new_tokens_0_falls_back_to_the_manifests_default_then_the_settings(
    serve: Serve,
) -> None:
    from support.paths import MANIFESTS
    from zarf_vllm.model.manifest import SamplingDefaults, load_manifest

    demo = load_manifest(MANIFESTS / "smollm2-135m-instruct.yaml")
    manifest = demo.model_copy(update={"sampling": SamplingDefaults(max_new_tokens=40)})
    cases = [
        ({}, manifest, 40),  # the manifest's default
        ({"sampling": {"max_new_tokens": 24}}, manifest, 24),  # the settings win over it
        ({}, None, 256),  # neither: config.py's default
    ]
    for settings, with_manifest, expected in cases:
        served = await serve(
            Script(finish="length"), settings=settings, manifest=with_manifest, max_model_len=1024
        )
        response = await served.chat().ChatComplete(leapfrogai_chat())
        assert response.usage.completion_tokens == expected, (settings, with_manifest)


async def test_max_new_tokens_0_is_still_clamped_to_the_context(serve: Serve) -> None:
    served = await serve(Script(finish="length"), max_model_len=64)  # default 256 > 64
    response = await served.chat().ChatComplete(leapfrogai_chat())
    assert response.choices[0].finish_reason == chat_pb2.LENGTH
    assert response.usage.prompt_tokens == len(rendered_chat_ids("Hello there"))
    assert response.usage.completion_tokens == 64 - response.usage.prompt_tokens


async def test_completion_max_new_tokens_0_means_the_default_as_in_chat(serve: Serve) -> None:
    served = await serve(
        Script(finish="length"), settings={"sampling": {"max_new_tokens": 24}}, max_model_len=1024
    )
    explicit_zero = completion_pb2.CompletionRequest(
        prompt="Once upon a time", max_new_tokens=0, temperature=1.0
    )
    assert explicit_zero.HasField("max_new_tokens")  # optional here: 0 is sent, not unset
    unset = completion_pb2.CompletionRequest(prompt="Once upon a time", temperature=1.0)
    for request in (explicit_zero, unset):
        response = await served.completion().Complete(request)
        assert response.usage.completion_tokens == 24
        assert served.fake.requests[-1].params.max_tokens == 24
        chunks = [c async for c in served.completion_stream().CompleteStream(request)]
        assert chunks[-1].usage.completion_tokens == 24


async def test_a_negative_max_new_tokens_is_still_refused_naming_the_field(serve: Serve) -> None:
    served = await serve()
    request = leapfrogai_chat()
    request.max_new_tokens = -3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.chat().ChatComplete(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("max_new_tokens:")
    assert "-3" in caught.value.details()


@pytest.mark.parametrize("count", [300, 500])
async def test_leapfrogai_embedding_calls_of_300_and_500_inputs_succeed_in_order(
    serve: Serve, count: int
) -> None:
    from zarf_vllm.backend.config import LimitSettings
    from zarf_vllm.backend.engine import EMBED_IN_FLIGHT

    default_limit = LimitSettings().max_embedding_inputs
    assert default_limit >= 500
    served = await serve(
        embedding=True, settings={"limits": {"max_embedding_inputs": default_limit}}
    )
    # Distinct texts of different lengths, so a vector out of place is seen.
    inputs = [f"chunk {i}: " + "The capital of France is Paris. " * (i % 5) for i in range(count)]
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(served.channel)
    response = await stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=inputs))
    vectors = [list(e.embedding) for e in response.embeddings]
    tokenizer = tiny_tokenizer()
    assert vectors == [embedding_of(tokenizer.encode(text)) for text in inputs]
    # Fed to the engine in a window, not all at once, and every input exactly once.
    assert served.fake.max_concurrent_encodes == EMBED_IN_FLIGHT
    assert len(served.fake.encoded) == 1 + count  # and the warm-up


async def test_an_embedding_call_over_the_limit_is_refused_naming_it(serve: Serve) -> None:
    served = await serve(embedding=True, settings={"limits": {"max_embedding_inputs": 500}})
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(served.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=["x"] * 501))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "inputs: at most 500 strings per call, got 501"


async def test_an_embedding_input_over_the_models_limit_is_truncated_keeping_its_start(
    serve: Serve,
) -> None:
    served = await serve(embedding=True, max_model_len=256)
    long_text = "The capital of France is Paris. " * 60
    text_ids = tokens(long_text)
    assert len(text_ids) + 1 > 256  # with the BOS, over the limit
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(served.channel)
    response = await stub.CreateEmbedding(
        embeddings_pb2.EmbeddingRequest(inputs=["short one", long_text, "another"])
    )
    assert len(response.embeddings) == 3
    bos = tiny_tokenizer().bos_token_id
    kept = [bos, *text_ids[:255]]  # the start, special token included, 256 in all
    assert served.fake.encoded[-3:] == [
        tiny_tokenizer().encode("short one"),
        kept,
        tiny_tokenizer().encode("another"),
    ]
    assert list(response.embeddings[1].embedding) == embedding_of(kept)
    assert served.metric("backend_prompt_tokens_total", method="CreateEmbedding") == sum(
        len(ids) for ids in served.fake.encoded[-3:]
    )


async def test_truncation_keeps_a_bert_tokenizers_closing_sep(serve: Serve) -> None:
    """[CLS] ... [SEP] models: the cut is inside the text, the closing [SEP] stays, as in
    sentence-transformers (its tokenizer call truncates before adding special tokens)."""
    from support.tiny_bert import bert_tokenizer

    bert = bert_tokenizer()
    served = await serve(embedding=True, max_model_len=32, tokenizer=bert)
    text = "Paris is the capital of France. " * 20
    words = bert.encode(text, add_special_tokens=False)
    assert len(words) > 32
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(served.channel)
    await stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=[text]))
    assert served.fake.encoded[-1] == [bert.cls_token_id, *words[:30], bert.sep_token_id]


async def test_embedding_overflow_refuse_names_the_input_and_embeds_nothing(
    serve: Serve,
) -> None:
    served = await serve(
        embedding=True, max_model_len=16, settings={"limits": {"embedding_overflow": "refuse"}}
    )
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(served.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=["short", "Paris " * 40]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("inputs: input 1 is ")
    assert "at most 16" in caught.value.details()
    assert served.fake.encoded == [tiny_tokenizer().encode("warm-up")]  # nothing else reached it


def test_embedding_overflow_is_a_checked_setting() -> None:
    from zarf_vllm.backend.config import ConfigError

    settings = load_settings(None, {"model": {"path": "/m"}})
    assert settings.limits.embedding_overflow == "truncate"
    assert (
        load_settings(
            None, {"model": {"path": "/m"}, "limits": {"embedding_overflow": "refuse"}}
        ).limits.embedding_overflow
        == "refuse"
    )
    with pytest.raises(ConfigError, match=r"limits\.embedding_overflow"):
        load_settings(None, {"model": {"path": "/m"}, "limits": {"embedding_overflow": "drop"}})
