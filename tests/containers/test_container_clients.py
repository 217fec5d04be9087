"""Every client path in one container, run as the chart renders it: the tiny random Llama with a
LoRA adapter (made by peft), packaged by scripts/image, started with what `scripts/preview`
renders for the cpu profile with OPENAI_API=true, an API key from a Secret
(OPENAI_API_KEY_SECRET) and TLS from a kubernetes.io/tls Secret (TLS_SECRET).

The container has no network (`--network none`); the relays (support/container_serving.py)
carry its gRPC port, the adapter's gRPC port, the OpenAI port and the plaintext health port to
127.0.0.1, byte for byte, so TLS runs end to end between the test's clients and the backend.
The clients are the real ones: gRPC with SSL credentials, the official `openai` client over
HTTPS with the CA bundle, plain HTTP for the refusals. The references are transformers and peft
generating greedily on the same files (support/tiny_lora.py), as tests/engine/test_lora.py
checks them on the host.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from testcontainers.core.container import DockerContainer

from support.certificates import Certificates, grpc_channel, make_pki
from support.container_deployment import BackendContainer, backend_container, preview_objects
from support.container_serving import REPORT, health_status, relays, run_step, wait_serving
from support.paths import REPO
from support.tiny_lora import build_tiny_lora, greedy_reference, write_manifest
from support.tiny_model import build_tiny_llama
from zarf_vllm.backend.proto.completion import completion_pb2, completion_pb2_grpc
from zarf_vllm.model.manifest import load_manifest
from zarf_vllm.packaging.weights.pull import pull

MODEL = "tiny-lora"
ADAPTER = "sql"
PROMPT = "The capital of France is"
TOKENS = 12
# What the cluster's Secrets would hold; the chart only names them.
KEY_SECRET, TLS_SECRET = "llm-api-key", "llm-tls"
API_KEY = "test-key-" + uuid.uuid4().hex
SETS = (
    "PROFILE=cpu",
    "OPENAI_API=true",
    f"OPENAI_API_KEY_SECRET={KEY_SECRET}",
    f"TLS_SECRET={TLS_SECRET}",
)


@dataclass(frozen=True)
class Sources:
    model: Path
    adapter: Path
    manifest: Path


@dataclass(frozen=True)
class Served:
    spec: BackendContainer
    addresses: dict[str, str]  # by the Deployment's port name: grpc, lora-0, openai, health
    pki: Certificates


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    root = tmp_path_factory.mktemp("clients-sources")
    model = build_tiny_llama(root / "model")
    adapter = build_tiny_lora(model, root / ADAPTER, rank=8, seed=1)
    manifest = write_manifest(model, {ADAPTER: adapter}, root / "manifests", MODEL)
    return Sources(model, adapter, manifest)


@pytest.fixture(scope="module")
def lora_image(
    backend_image: str, sources: Sources, tmp_path_factory: pytest.TempPathFactory
) -> str:
    weights = pull(load_manifest(sources.manifest), tmp_path_factory.mktemp("w") / MODEL)
    return run_step(
        "tiny LoRA model image build",
        [str(REPO / "scripts/image"), str(sources.manifest), "--flavor", "cpu",
         "--base", backend_image, "--weights", str(weights.directory)],
        900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def served(
    lora_image: str,
    backend_image: str,
    sources: Sources,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("clients")
    pki = make_pki(work / "pki")
    secrets = {
        KEY_SECRET: {"api-key": API_KEY},
        TLS_SECRET: {
            name: (pki.directory / name).read_text() for name in ("tls.crt", "tls.key", "ca.crt")
        },
    }
    spec = backend_container(preview_objects(*SETS, manifest=sources.manifest), secrets)
    assert spec.image == lora_image, "the chart must run the model image built here"
    assert {"grpc", "lora-0", "openai", "health"} <= set(spec.ports)
    name = f"zarf-vllm-clients-{uuid.uuid4().hex[:8]}"
    model = spec.testcontainer(lora_image, work / "files", network_mode="none").with_name(name)
    names = ["grpc", "lora-0", "openai", "health"]
    relayed = relays(backend_image, name, work, [spec.ports[n] for n in names])
    started: list[DockerContainer] = []
    try:
        start = time.monotonic()
        for container in (model, relayed.inner, relayed.outer):
            started.append(container.start())
        by_port = relayed.addresses()
        addresses = {n: by_port[spec.ports[n]] for n in names}
        # Under TLS the kubelet's probes call the plaintext health-only port; so does this wait.
        wait_serving(addresses["health"], model, spec.startup_budget_s)
        REPORT["docker run to SERVING, tiny LoRA model with TLS (s)"] = (
            f"{time.monotonic() - start:.1f}"
        )
        yield Served(spec, addresses, pki)
    finally:
        for container in reversed(started):
            container.stop()


def grpc_completion(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    with grpc_channel(address, credentials) as channel:
        stub = completion_pb2_grpc.CompletionServiceStub(channel)
        request = completion_pb2.CompletionRequest(
            prompt=PROMPT, max_new_tokens=TOKENS, temperature=0
        )
        return stub.Complete(request, timeout=60).choices[0].text


def ca_credentials(served: Served) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=served.pki.ca.read_bytes())


def openai_client(served: Served, http: httpx.Client, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"https://{served.addresses['openai']}/v1",
        api_key=api_key,
        http_client=http,
        max_retries=0,
    )


def https(served: Served) -> httpx.Client:
    """An HTTP client that trusts the test's CA, as the openai client is given one."""
    return httpx.Client(verify=ssl.create_default_context(cafile=str(served.pki.ca)), timeout=60)


def test_grpc_over_tls_serves_the_model_and_its_adapter_on_its_own_port(
    served: Served, sources: Sources
) -> None:
    base = greedy_reference(sources.model, None, PROMPT, TOKENS)
    adapted = greedy_reference(sources.model, sources.adapter, PROMPT, TOKENS)
    assert adapted != base  # the adapter is not a no-op
    credentials = ca_credentials(served)
    assert grpc_completion(served.addresses["grpc"], credentials) == base
    assert grpc_completion(served.addresses["lora-0"], credentials) == adapted


def test_the_openai_client_over_https_with_the_secrets_key(
    served: Served, sources: Sources
) -> None:
    adapted = greedy_reference(sources.model, sources.adapter, PROMPT, TOKENS)
    with https(served) as http:
        client = openai_client(served, http)
        assert {m.id for m in client.models.list()} == {MODEL, ADAPTER}
        completion = client.completions.create(
            model=ADAPTER, prompt=PROMPT, max_tokens=TOKENS, temperature=0
        )
        assert completion.choices[0].text == adapted
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello there"}],
            max_tokens=6,
            logit_bias={"0": -100},  # the tiny model's end token: the answer runs to 6 tokens
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 6


def test_the_openai_api_refuses_a_missing_or_wrong_key(served: Served) -> None:
    with https(served) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = http.get(f"https://{served.addresses['openai']}/v1/models", headers=headers)
            assert response.status_code == 401, response.text
            assert response.json()["error"]["type"]
        with pytest.raises(openai.AuthenticationError):
            openai_client(served, http, api_key="wrong").models.list()


def test_plaintext_is_refused_and_the_health_port_stays_plaintext(served: Served) -> None:
    for port_name in ("grpc", "lora-0"):
        with pytest.raises(grpc.RpcError) as caught:
            grpc_completion(served.addresses[port_name], None)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # The TLS server reads "GET ..." as a broken handshake and closes the connection.
    with pytest.raises(httpx.RemoteProtocolError, match="disconnected without sending"):
        httpx.get(f"http://{served.addresses['openai']}/v1/models", timeout=10)
    assert health_status(served.addresses["health"]) == "SERVING"
