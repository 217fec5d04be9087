"""LoRA adapters on the real backend and vLLM CPU engine: the tiny random Llama with two
adapters made by peft, pulled and verified from a manifest, served by ONE backend: once as one
process, once as two front-end processes on the same ports (server.api_processes: 2).

Each adapter is a model name on the OpenAI API and a gRPC port of its own (docs/lora.md). The
references are transformers (and peft) generating greedily on the same files: the base model's
output matches the model without any adapter, each adapter's matches peft's, and differs from
the base.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from support.backend_process import BackendProcess
from support.tiny_lora import build_tiny_lora, greedy_reference, write_manifest
from support.tiny_model import build_tiny_llama
from zarf_vllm.backend.proto.completion import completion_pb2, completion_pb2_grpc
from zarf_vllm.backend.proto.name import name_pb2_grpc
from zarf_vllm.model.manifest import load_manifest
from zarf_vllm.packaging.weights.pull import pull

MODEL = "tiny-lora"
ADAPTERS = ("sql", "poems")
PROMPT = "The capital of France is"
TOKENS = 12


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-sources")
    model = build_tiny_llama(root / "model")
    adapters = {
        name: build_tiny_lora(model, root / name, rank=rank, seed=seed)
        for name, rank, seed in (("sql", 8, 1), ("poems", 16, 2))
    }
    return {"model": model, **adapters}


@pytest.fixture(scope="module")
def manifest_path(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    adapters = {name: sources[name] for name in ADAPTERS}
    return write_manifest(sources["model"], adapters, tmp_path_factory.mktemp("m"), MODEL)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-front-ends"])
def backend(
    manifest_path: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[BackendProcess]:
    weights = pull(load_manifest(manifest_path), tmp_path_factory.mktemp("w") / MODEL).directory
    settings = {
        "model": {"manifest": str(manifest_path), "verify": "full"},
        "server": {"api_processes": request.param},
    }
    with BackendProcess(
        weights, tmp_path_factory.mktemp("lora-backend"), settings
    ).serving() as process:
        yield process


@pytest.fixture(scope="module")
def adapter_ports(backend: BackendProcess) -> dict[str, int]:
    return backend.events("listening")[0]["adapter_ports"]


def reference(sources: dict[str, Path], adapter: str | None) -> str:
    return greedy_reference(sources["model"], sources.get(adapter or ""), PROMPT, TOKENS)


def openai_completion(backend: BackendProcess, model: str) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{backend.openai_port}/v1/completions",
        json={"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0},
        timeout=60,
    )


def grpc_completion(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = completion_pb2_grpc.CompletionServiceStub(channel)
        request = completion_pb2.CompletionRequest(
            prompt=PROMPT, max_new_tokens=TOKENS, temperature=0
        )
        return stub.Complete(request, timeout=60).choices[0].text


def grpc_name(port: int) -> str:
    from google.protobuf import empty_pb2

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return name_pb2_grpc.NameServiceStub(channel).Name(empty_pb2.Empty(), timeout=10).name


def test_base_model_is_unchanged_by_the_adapters(backend, sources) -> None:
    expected = reference(sources, None)
    response = openai_completion(backend, MODEL)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected
    assert grpc_completion(backend.port) == expected


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_each_adapter_generates_through_its_weights(
    backend, sources, adapter_ports, adapter: str
) -> None:
    expected = reference(sources, adapter)
    assert expected != reference(sources, None)  # the adapter is not a no-op
    response = openai_completion(backend, adapter)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == expected
    assert grpc_completion(adapter_ports[adapter]) == expected


def test_each_adapter_port_names_its_adapter(backend, adapter_ports) -> None:
    assert sorted(adapter_ports) == sorted(ADAPTERS)
    assert len(set(adapter_ports.values()) | {backend.port}) == len(ADAPTERS) + 1
    assert grpc_name(backend.port) == MODEL
    for name, port in adapter_ports.items():
        assert grpc_name(port) == name


def test_models_list_the_adapters_and_unknown_names_are_404(backend) -> None:
    base = f"http://127.0.0.1:{backend.openai_port}/v1"
    listed = {m["id"] for m in httpx.get(f"{base}/models", timeout=10).json()["data"]}
    assert listed == {MODEL, *ADAPTERS}
    response = openai_completion(backend, "no-such-adapter")
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert "no-such-adapter" in message
    for name in (MODEL, *ADAPTERS):
        assert name in message
