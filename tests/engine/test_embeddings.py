"""An embedding model (all-MiniLM-L6-v2, from its PyPI wheel) served on vLLM's pooling runner:
EmbeddingsService instead of the generation services, with sensible vectors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from support.backend_process import BackendProcess
from support.paths import EMBEDDING_MANIFEST
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
from zarf_vllm.backend.proto.embeddings import embeddings_pb2, embeddings_pb2_grpc


@pytest.fixture(scope="module")
def embedding_backend(
    embedding_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendProcess]:
    with BackendProcess(
        embedding_model_dir,
        tmp_path_factory.mktemp("embed"),
        {"model": {"manifest": str(EMBEDDING_MANIFEST)}, "limits": {"max_embedding_inputs": 8}},
    ).serving() as backend:
        yield backend


def embed(backend: BackendProcess, *texts: str) -> list[list[float]]:
    with grpc.insecure_channel(backend.address) as channel:
        stub = embeddings_pb2_grpc.EmbeddingsServiceStub(channel)
        response = stub.CreateEmbedding(embeddings_pb2.EmbeddingRequest(inputs=list(texts)))
    return [list(e.embedding) for e in response.embeddings]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_similar_sentences_have_similar_vectors(embedding_backend: BackendProcess) -> None:
    paris, capital, other = embed(
        embedding_backend,
        "Paris is the capital of France.",
        "The French capital is Paris.",
        "My cat sleeps on the warm windowsill all afternoon.",
    )
    assert len(paris) == 384
    assert cosine(paris, capital) > 0.8
    assert cosine(paris, other) < 0.3


def test_only_the_embedding_service_is_offered(embedding_backend: BackendProcess) -> None:
    with grpc.insecure_channel(embedding_backend.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names = {
            s.name for r in stub.ServerReflectionInfo(iter([request]))
            for s in r.list_services_response.service
        }  # fmt: skip
        assert "embeddings.EmbeddingsService" in names
        assert "chat.ChatCompletionService" not in names
        with pytest.raises(grpc.RpcError) as caught:
            chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(
                chat_pb2.ChatCompletionRequest(max_new_tokens=1)
            )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    ("inputs", "message"),
    [([], "inputs: must hold at least one string"), (["x"] * 9, "inputs: at most 8")],
)
def test_bad_embedding_requests_get_invalid_argument(
    embedding_backend: BackendProcess, inputs: list[str], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        embed(embedding_backend, *inputs)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(message)


def test_the_openai_api_embeds_the_same_vectors(embedding_backend: BackendProcess) -> None:
    """/v1/embeddings on the same engine: the gRPC call's vectors, OpenAI's shape and usage;
    no chat endpoint for an embedding model."""
    import httpx
    import openai

    base_url = f"http://127.0.0.1:{embedding_backend.openai_port}"
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    [model] = [m.id for m in client.models.list().data]
    texts = ["Paris is the capital of France.", "My cat sleeps on the warm windowsill."]
    response = client.embeddings.create(model=model, input=texts)
    assert [e.index for e in response.data] == [0, 1]
    assert response.usage.prompt_tokens > 0
    for openai_vector, grpc_vector in zip(
        (e.embedding for e in response.data), embed(embedding_backend, *texts), strict=True
    ):
        assert len(openai_vector) == 384
        assert cosine(openai_vector, grpc_vector) > 0.999
    chat = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert chat.status_code == 404 and chat.json()["error"]["code"] == 404
