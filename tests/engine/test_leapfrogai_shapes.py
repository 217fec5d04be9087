"""The LeapfrogAI API's real request shapes (v0.14.0) against the real vLLM CPU engine.

What the API sends, measured in front of this backend: chat with only chat_items,
max_new_tokens 0 (for `"max_tokens": null`) and temperature 1.0; CreateEmbedding with up to 500
inputs per call (RAG indexing), some longer than the model's limit; and its RAG asks for a model
named `text-embeddings` that gives 768-dimension vectors. Every gRPC error shows there as a bare
HTTP 500, so each shape must succeed.

Two engine starts: a random 768-d BERT encoder (tests/support/tiny_bert.py) served the way the
chart renders the bge-base-en-v1.5 manifest with MODEL_NAME=text-embeddings, and the session's
tiny Llama (tests/conftest.py) for the generation shapes.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from support.backend_process import BackendProcess
from support.profiles_fixtures import config_of, run_preview
from support.tiny_bert import HIDDEN_SIZE, MAX_SEQ_LENGTH, bert_tokenizer, build_tiny_bert
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
from zarf_vllm.backend.proto.completion import completion_pb2, completion_pb2_grpc
from zarf_vllm.backend.proto.embeddings import embeddings_pb2, embeddings_pb2_grpc
from zarf_vllm.backend.proto.name import name_pb2_grpc
from zarf_vllm.packaging.preview import Preview

LEAPFROGAI_NAME = "text-embeddings"  # what LeapfrogAI's RAG asks for
MANIFEST_768 = "bge-base-en-v1.5"
DEFAULT_MAX_NEW_TOKENS = 256  # config.py's sampling.max_new_tokens; the tiny backend sets none


@pytest.fixture(scope="module")
def rendered_768() -> dict[str, Any]:
    """What the chart renders for the 768-d manifest on the cpu profile, as LeapfrogAI's
    text-embeddings: the backend's config.yaml and the discovery ConfigMap's models.toml."""
    result = run_preview(MANIFEST_768, PROFILE="cpu", MODEL_NAME=LEAPFROGAI_NAME)
    assert isinstance(result, Preview), f"the chart refused {MANIFEST_768}: {result}"
    # Found as the API's sidecar finds it: by its label, whatever the release calls it.
    [discovery] = [
        item.object
        for item in result.objects
        if item.object["kind"] == "ConfigMap"
        and item.object["metadata"].get("labels", {}).get("leapfrogai") == "sparkle"
    ]
    return {
        "config": config_of(result),
        "models": tomllib.loads(discovery["data"]["models.toml"])["models"],
    }


@pytest.fixture(scope="module")
def text_embeddings(
    rendered_768: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendProcess]:
    """The backend on a random 768-d BERT with the rendered name and limits. The task is set
    here because the manifest (whose task is embed) describes bge's weights, not these."""
    model_dir = build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    rendered = rendered_768["config"]
    with BackendProcess(
        model_dir,
        tmp_path_factory.mktemp("text-embeddings"),
        {
            "model": {"name": rendered["model"]["name"], "task": "embed"},
            "limits": rendered["limits"],
        },
    ).serving() as backend:
        yield backend


def embed(backend: BackendProcess, texts: list[str]) -> list[list[float]]:
    # A new channel per call, as the LeapfrogAI API opens one for every call.
    with grpc.insecure_channel(backend.address) as channel:
        stub = embeddings_pb2_grpc.EmbeddingsServiceStub(channel)
        response = stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=texts), timeout=300)
    return [list(e.embedding) for e in response.embeddings]


# Words of the tiny BERT's vocabulary (it knows no digits: "chunk 1" and "chunk 2" would both be
# [UNK]s); input i spells i in base 8 with them.
WORDS = ["paris", "rome", "cat", "capital", "france", "italy", "documents", "vectors"]


def distinct_text(number: int) -> str:
    digits = []
    while True:
        number, digit = divmod(number, len(WORDS))
        digits.append(WORDS[digit])
        if not number:
            return "the " + " ".join(reversed(digits))


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# -- text-embeddings: 768 dimensions, 500 inputs, long inputs ----------------------------


def test_listed_and_named_as_leapfrogais_text_embeddings(
    rendered_768: dict[str, Any], text_embeddings: BackendProcess
) -> None:
    # MODEL_NAME sets both names: the one LeapfrogAI lists (models.toml) and NameService's.
    [listed] = rendered_768["models"]
    assert listed["name"] == LEAPFROGAI_NAME and listed["type"] == "gRPC"
    assert rendered_768["config"]["model"]["name"] == LEAPFROGAI_NAME
    with grpc.insecure_channel(text_embeddings.address) as channel:
        name = name_pb2_grpc.NameServiceStub(channel).Name(empty_pb2.Empty()).name
    assert name == LEAPFROGAI_NAME


def test_vectors_have_768_dimensions_and_unit_length(text_embeddings: BackendProcess) -> None:
    vectors = embed(text_embeddings, ["Paris is the capital of France.", "My cat sleeps."])
    assert [len(v) for v in vectors] == [HIDDEN_SIZE, HIDDEN_SIZE]
    for vector in vectors:  # the model's Normalize module
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)


@pytest.mark.parametrize("count", [300, 500])
def test_calls_of_300_and_500_inputs_succeed_in_order(
    rendered_768: dict[str, Any], text_embeddings: BackendProcess, count: int
) -> None:
    assert rendered_768["config"]["limits"]["max_embedding_inputs"] >= 500
    inputs = [distinct_text(i) for i in range(count)]
    tokenized = [tuple(bert_tokenizer().encode(text)) for text in inputs]
    assert len(set(tokenized)) == count  # no two inputs are the same tokens
    vectors = embed(text_embeddings, inputs)
    assert len(vectors) == count
    assert {len(v) for v in vectors} == {HIDDEN_SIZE}
    # Each vector is its own input's: the same text embedded alone gives the same vector.
    for position in (0, 1, count // 2, count - 1):
        [alone] = embed(text_embeddings, [inputs[position]])
        assert cosine(vectors[position], alone) > 0.9999, position
    assert cosine(vectors[0], vectors[1]) < 0.9999  # distinct inputs are told apart


def test_an_input_over_256_tokens_is_truncated_keeping_its_start(
    text_embeddings: BackendProcess,
) -> None:
    assert len(bert_tokenizer().encode("paris rome", add_special_tokens=False)) == 2
    words = MAX_SEQ_LENGTH - 2  # [CLS] and [SEP] take two of the model's 256 positions
    long_text = "paris " * words + "rome " * 400  # 656 tokens with the special ones
    start, end = "paris " * words, "rome " * words
    truncated, kept_start, kept_end = embed(text_embeddings, [long_text, start, end])
    assert len(truncated) == HIDDEN_SIZE
    assert cosine(truncated, kept_start) > 0.9999
    assert cosine(kept_start, kept_end) < 0.99  # the check tells the two sides apart
    # And the operator can see it happened (the model's limit is vLLM's derived max_model_len).
    event = text_embeddings.wait_for_event(
        lambda e: e.get("message") == "embedding inputs truncated"
    )
    assert (event["truncated"], event["inputs"], event["max_tokens"]) == (1, 3, MAX_SEQ_LENGTH)
    assert event["longest_tokens"] == words + 400 + 2


# -- chat and completion with max_new_tokens 0 (the tiny Llama) ---------------------------


def leapfrogai_chat() -> chat_pb2.ChatCompletionRequest:
    return chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content="What is the capital?")],
        max_new_tokens=0,
        temperature=1.0,
    )


def check_default_length(reason: int, completion_tokens: int, length: int) -> None:
    """Ran to the default (256) or stopped before it: never refused, never longer."""
    assert 0 < completion_tokens <= DEFAULT_MAX_NEW_TOKENS
    if reason == length:
        assert completion_tokens == DEFAULT_MAX_NEW_TOKENS


def test_leapfrogai_chat_with_max_tokens_null_is_served(tiny_channel: grpc.Channel) -> None:
    response = chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel).ChatComplete(
        leapfrogai_chat(), timeout=120
    )
    choice = response.choices[0]  # all the API reads
    assert choice.finish_reason in (chat_pb2.STOP, chat_pb2.LENGTH)
    check_default_length(choice.finish_reason, response.usage.completion_tokens, chat_pb2.LENGTH)

    chunks = list(
        chat_pb2_grpc.ChatCompletionStreamServiceStub(tiny_channel).ChatCompleteStream(
            leapfrogai_chat(), timeout=120
        )
    )
    last = chunks[-1]
    assert last.choices[0].finish_reason in (chat_pb2.STOP, chat_pb2.LENGTH)
    check_default_length(
        last.choices[0].finish_reason, last.usage.completion_tokens, chat_pb2.LENGTH
    )


def test_leapfrogai_completion_with_max_tokens_null_is_served(tiny_channel: grpc.Channel) -> None:
    request = completion_pb2.CompletionRequest(
        prompt="The capital of France is", max_new_tokens=0, temperature=1.0
    )
    response = completion_pb2_grpc.CompletionServiceStub(tiny_channel).Complete(
        request, timeout=120
    )
    choice = response.choices[0]
    assert choice.finish_reason in (completion_pb2.STOP, completion_pb2.LENGTH)
    check_default_length(
        choice.finish_reason, response.usage.completion_tokens, completion_pb2.LENGTH
    )


def test_a_negative_max_new_tokens_is_refused_naming_the_field(tiny_channel: grpc.Channel) -> None:
    request = leapfrogai_chat()
    request.max_new_tokens = -1
    with pytest.raises(grpc.RpcError) as caught:
        chat_pb2_grpc.ChatCompletionServiceStub(tiny_channel).ChatComplete(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("max_new_tokens:")
