"""TLS on both APIs, on the real backend and vLLM CPU engine (tiny random Llama).

Certificates made here (support/certificates.py: a CA, a server certificate for 127.0.0.1 and
localhost, client certificates). Two backends, one per class, one after the other: TLS
(the chart's TLS_SECRET alone) and mutual TLS (TLS_CLIENT_CA=true). Each asserts what a
client really gets: gRPC through grpc.ssl_channel_credentials, the official `openai` client
through httpx with the CA, and the refusals of plaintext and of clients without a certificate.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.backend_process import SERVING, BackendProcess
from support.certificates import Certificates, Issued, grpc_channel, make_pki
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

MODEL = "tiny"
NO_EOS = {"0": -100}  # tiny_model's "<|end|>": answers run to max tokens
HELLO = chat_pb2.ChatCompletionRequest(
    chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content="Hello there")],
    max_new_tokens=6,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_pki(tmp_path_factory.mktemp("secret"))


def start_backend(
    model: Path, workdir: Path, pki: Certificates, *, mutual: bool
) -> Iterator[BackendProcess]:
    tls: dict[str, object] = {
        "cert_file": str(pki.directory / "tls.crt"),
        "key_file": str(pki.directory / "tls.key"),
        "health_port": 0,
    }
    if mutual:
        tls |= {"client_ca_file": str(pki.directory / "ca.crt"), "require_client_cert": True}
    settings = {"model": {"name": MODEL}, "engine": {"max_model_len": 512}, "tls": tls}
    with BackendProcess(model, workdir, settings).serving() as backend:
        yield backend


def grpc_credentials(pki: Certificates, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=None if client is None else client.key.read_bytes(),
        certificate_chain=None if client is None else client.cert.read_bytes(),
    )


def grpc_chat(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    with grpc_channel(address, credentials) as channel:
        stub = chat_pb2_grpc.ChatCompletionServiceStub(channel)
        return stub.ChatComplete(HELLO, timeout=60).choices[0].chat_item.content


def grpc_refusal(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_chat(address, credentials)
    return caught.value


def https_context(pki: Certificates, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def openai_chat(port: int, verify: ssl.SSLContext, host: str = "127.0.0.1") -> str:
    with httpx.Client(verify=verify, timeout=60) as http:
        client = openai.OpenAI(
            base_url=f"https://{host}:{port}/v1", api_key="none", http_client=http, max_retries=0
        )
        response = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello there"}],
            max_tokens=6,
            logit_bias=NO_EOS,
        )
    assert response.usage is not None and response.usage.completion_tokens == 6
    return response.choices[0].message.content or ""


def openai_probe(backend: BackendProcess, verify: ssl.SSLContext) -> httpx.Response:
    return httpx.get(f"https://127.0.0.1:{backend.openai_port}/health", verify=verify, timeout=10)


class TestServerTLS:
    """TLS_SECRET alone: the server proves itself; any client that trusts the CA may call."""

    @pytest.fixture(scope="class")
    @classmethod
    def backend(
        cls, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, pki: Certificates
    ) -> Iterator[BackendProcess]:
        # Class scope: this backend stops before TestMutualTLS starts its own.
        yield from start_backend(tiny_model_dir, tmp_path_factory.mktemp("tls"), pki, mutual=False)

    def test_the_listening_line_says_tls_and_names_the_health_port(
        self, backend: BackendProcess
    ) -> None:
        [listening] = backend.events("listening")
        assert listening["tls"] is True
        assert backend.health_port and backend.health_port != backend.port

    def test_grpc_chat_over_tls(self, backend: BackendProcess, pki: Certificates) -> None:
        assert grpc_chat(backend.address, grpc_credentials(pki))
        # The certificate's DNS name works as well as its IP address.
        assert grpc_chat(f"localhost:{backend.port}", grpc_credentials(pki))

    def test_plaintext_grpc_is_refused(self, backend: BackendProcess) -> None:
        error = grpc_refusal(backend.address, None)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error

    def test_a_client_that_does_not_trust_the_ca_is_refused(
        self, backend: BackendProcess, tmp_path: Path
    ) -> None:
        other = make_pki(tmp_path / "other")
        error = grpc_refusal(backend.address, grpc_credentials(other))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            openai_probe(backend, https_context(other))

    def test_the_openai_client_over_https(self, backend: BackendProcess, pki: Certificates) -> None:
        assert openai_chat(backend.openai_port, https_context(pki))
        assert openai_chat(backend.openai_port, https_context(pki), host="localhost")

    def test_plain_http_gets_no_answer(self, backend: BackendProcess) -> None:
        # The TLS server reads "GET ..." as a broken handshake and closes the connection.
        with pytest.raises(httpx.RemoteProtocolError, match="disconnected without sending"):
            httpx.get(f"http://127.0.0.1:{backend.openai_port}/health", timeout=10)

    def test_the_health_port_is_plaintext_health_only(self, backend: BackendProcess) -> None:
        with grpc.insecure_channel(backend.health_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
            with pytest.raises(grpc.RpcError) as caught:
                chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(HELLO, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

    def test_metrics_stay_plain_http(self, backend: BackendProcess, pki: Certificates) -> None:
        # Prometheus scrapes inside the cluster in plain HTTP; calls over TLS are counted there.
        ok = {"api": "grpc", "code": "OK"}
        before = backend.metric("backend_requests_total", ok)
        grpc_chat(backend.address, grpc_credentials(pki))
        assert backend.metric("backend_requests_total", ok) == before + 1


class TestMutualTLS:
    """TLS_CLIENT_CA=true: only clients with a certificate the Secret's ca.crt signed."""

    @pytest.fixture(scope="class")
    @classmethod
    def backend(
        cls, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, pki: Certificates
    ) -> Iterator[BackendProcess]:
        yield from start_backend(tiny_model_dir, tmp_path_factory.mktemp("mtls"), pki, mutual=True)

    def test_a_client_certificate_is_accepted_on_both_apis(
        self, backend: BackendProcess, pki: Certificates
    ) -> None:
        assert grpc_chat(backend.address, grpc_credentials(pki, pki.client))
        assert openai_chat(backend.openai_port, https_context(pki, pki.client))

    def test_a_client_without_a_certificate_is_refused(
        self, backend: BackendProcess, pki: Certificates
    ) -> None:
        error = grpc_refusal(backend.address, grpc_credentials(pki))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        with pytest.raises(httpx.TransportError):
            openai_probe(backend, https_context(pki))

    def test_a_certificate_from_another_ca_is_refused(
        self, backend: BackendProcess, pki: Certificates
    ) -> None:
        error = grpc_refusal(backend.address, grpc_credentials(pki, pki.stranger))
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        with pytest.raises(httpx.TransportError):
            openai_probe(backend, https_context(pki, pki.stranger))

    def test_plaintext_is_refused_and_health_stays_open_to_probes(
        self, backend: BackendProcess
    ) -> None:
        assert grpc_refusal(backend.address, None).code() == grpc.StatusCode.UNAVAILABLE
        assert backend.health() == SERVING  # the plaintext health port, as kubelet calls it

    def test_the_chat_command_speaks_mutual_tls(
        self, backend: BackendProcess, pki: Certificates
    ) -> None:
        tls_flags = ["--ca-file", str(pki.ca)]
        client_flags = ["--cert-file", str(pki.client.cert), "--key-file", str(pki.client.key)]
        ok = chat_command(backend, *tls_flags, *client_flags, "--wait", "30")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout and "completion tokens" in ok.stderr
        refused = chat_command(backend, *tls_flags)
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"error: {backend.address}: UNAVAILABLE"), refused.stderr


def chat_command(backend: BackendProcess, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "zarf_vllm.backend", "chat", "--address", backend.address]
    return subprocess.run(
        [*command, "--max-new-tokens", "4", *flags, "Hello"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_certificate_stops_start_up_with_one_line(tmp_path: Path) -> None:
    absent = tmp_path / "tls.crt"
    result = subprocess.run(
        [sys.executable, "-m", "zarf_vllm.backend", "serve", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "BACKEND_TLS__CERT_FILE": str(absent),
            "BACKEND_TLS__KEY_FILE": str(tmp_path / "tls.key"),
        },
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == [
        f"error: tls.cert_file {absent} does not exist: mount the certificate Secret there, "
        "or unset tls.cert_file and tls.key_file to serve without TLS"
    ]
