"""The server's life on the real engine: loading, overload, cancellation, SIGTERM, engine death."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from support.backend_process import NOT_SERVING, SERVING, BackendProcess
from support.paths import REPO
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

EOS_ID = "0"  # tiny_model's "<|end|>", the first special token
NO_EOS = {EOS_ID: -100}


def long_chat(tokens: int = 900) -> chat_pb2.ChatCompletionRequest:
    return chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content="Tell me a long story")],
        max_new_tokens=tokens,
        logit_bias=NO_EOS,
    )


def wait_until(predicate, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(message)


# -- cancellation on the shared backend ---------------------------------------------------


async def test_a_cancelled_stream_is_aborted_in_the_engine(tiny_backend: BackendProcess) -> None:
    async with grpc.aio.insecure_channel(tiny_backend.address) as channel:
        call = chat_pb2_grpc.ChatCompletionStreamServiceStub(channel).ChatCompleteStream(
            long_chat()
        )
        chunks = 0
        async for _ in call:
            chunks += 1
            if chunks == 3:
                break
        assert tiny_backend.metric("backend_engine_unfinished_requests") == 1
        call.cancel()
    await asyncio.to_thread(
        wait_until,
        lambda: tiny_backend.metric("backend_engine_unfinished_requests") == 0,
        5,
        "the engine still holds the cancelled request",
    )
    await asyncio.to_thread(
        tiny_backend.wait_for_event,
        lambda e: e.get("method") == "ChatCompleteStream" and e.get("status") == "CANCELLED",
    )


def test_a_passed_deadline_aborts_the_request(tiny_backend: BackendProcess) -> None:
    with (
        grpc.insecure_channel(tiny_backend.address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(long_chat(), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(
        lambda: tiny_backend.metric("backend_engine_unfinished_requests") == 0,
        5,
        "the engine still holds the timed-out request",
    )


def test_a_client_that_disappears_is_aborted(tiny_backend: BackendProcess) -> None:
    client = f"""
import grpc, sys
sys.path[:0] = {sys.path!r}
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
req = chat_pb2.ChatCompletionRequest(chat_items=[chat_pb2.ChatItem(content="hi")],
    max_new_tokens=900, logit_bias={NO_EOS!r})
ch = grpc.insecure_channel("{tiny_backend.address}")
for i, _ in enumerate(chat_pb2_grpc.ChatCompletionStreamServiceStub(ch).ChatCompleteStream(req)):
    if i == 2:
        print("streaming", flush=True)
        sys.stdin.read()
"""
    process = subprocess.Popen(
        [sys.executable, "-c", client], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "streaming"
    assert tiny_backend.metric("backend_engine_unfinished_requests") == 1
    process.kill()  # no goodbye: the connection just drops
    process.wait()
    wait_until(
        lambda: tiny_backend.metric("backend_engine_unfinished_requests") == 0,
        10,
        "the engine still holds the request of a vanished client",
    )


# -- a backend of its own: start-up, overload, SIGTERM --------------------------------------


@pytest.fixture(scope="module")
def limited_backend(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendProcess]:
    """Started by the start-up test, which watches it load; capped at 2 calls in flight."""
    backend = BackendProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("limited"),
        {
            "engine": {"max_model_len": 1024},
            "limits": {"max_in_flight": 2, "drain_timeout_s": 60},
            "model": {"name": "limited"},
        },
    ).start()
    yield backend
    backend.stop()


def test_health_is_not_serving_until_the_warm_up_has_run(limited_backend: BackendProcess) -> None:
    limited_backend.wait_listening()
    seen: list[int] = []
    refused_while_loading = None
    with grpc.insecure_channel(limited_backend.address) as channel:
        stub = chat_pb2_grpc.ChatCompletionServiceStub(channel)
        while not seen or seen[-1] != SERVING:
            seen.append(limited_backend.health())
            if seen[-1] == NOT_SERVING and refused_while_loading is None:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.ChatComplete(long_chat(4))
                refused_while_loading = caught.value
            assert limited_backend.process is not None and limited_backend.process.poll() is None
            time.sleep(0.05)
    assert seen[0] == NOT_SERVING, "health must not say SERVING before the model is loaded"
    assert seen[-1] == SERVING
    assert refused_while_loading is not None
    assert refused_while_loading.code() == grpc.StatusCode.UNAVAILABLE
    assert "loading" in refused_while_loading.details()
    messages = [e["message"] for e in limited_backend.events()]
    assert messages.index("loading model") < messages.index("serving")
    # The warm-up request ran before SERVING: the engine has seen a request already.
    assert limited_backend.metric("vllm:request_success_total") >= 1


async def test_past_the_cap_calls_get_resource_exhausted_at_once(
    limited_backend: BackendProcess,
) -> None:
    limited_backend.wait_serving()
    async with grpc.aio.insecure_channel(limited_backend.address) as channel:
        stub = chat_pb2_grpc.ChatCompletionStreamServiceStub(channel)
        calls = [stub.ChatCompleteStream(long_chat()) for _ in range(2)]
        for call in calls:
            await call.read()  # both are in flight now
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(long_chat(4))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 1.0
        for call in calls:
            call.cancel()
    await asyncio.to_thread(
        wait_until, lambda: limited_backend.metric("backend_requests_in_flight") == 0, 5, "stuck"
    )
    # Once there is room again, calls are served.
    async with grpc.aio.insecure_channel(limited_backend.address) as channel:
        response = await chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(long_chat(4))
    assert response.usage.completion_tokens == 4


async def test_sigterm_drains_calls_in_flight_then_exits_zero(
    limited_backend: BackendProcess,
) -> None:
    limited_backend.wait_serving()
    async with grpc.aio.insecure_channel(limited_backend.address) as channel:
        stub = chat_pb2_grpc.ChatCompletionStreamServiceStub(channel)
        calls = [stub.ChatCompleteStream(long_chat(300)) for _ in range(2)]
        for call in calls:
            await call.read()
        limited_backend.terminate()
        await asyncio.to_thread(
            wait_until, lambda: limited_backend.health() == NOT_SERVING, 5, "health still SERVING"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(long_chat(4))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        for call in calls:
            chunks = []
            while (chunk := await call.read()) is not grpc.aio.EOF:
                chunks.append(chunk)
            assert chunks[-1].choices[0].finish_reason == chat_pb2.LENGTH
            assert chunks[-1].usage.completion_tokens == 300
            assert await call.code() == grpc.StatusCode.OK
    assert await asyncio.to_thread(limited_backend.wait, 60) == 0


# -- engine death --------------------------------------------------------------------------


def test_the_server_exits_non_zero_when_the_engine_dies(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    backend = BackendProcess(tiny_model_dir, tmp_path, {"engine": {"max_model_len": 512}}).start()
    try:
        backend.wait_serving()
        server = psutil.Process(backend.process.pid)  # type: ignore[union-attr]
        engines = [
            p
            for p in server.children(recursive=True)
            if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()
        ]
        assert engines, [p.cmdline() for p in server.children(recursive=True)]
        for engine in engines:
            engine.kill()
        assert backend.wait(60) == 1
        assert any(e["message"].startswith("engine died") for e in backend.events())
    finally:
        backend.stop()


# -- no network ----------------------------------------------------------------------------


def test_the_backend_serves_with_no_route_out(tiny_model_dir: Path, tmp_path: Path) -> None:
    """In a network namespace whose only interface is loopback, the whole start-up and a chat
    work: nothing the backend does at run time needs the network."""
    script = REPO / "tests" / "support" / "offline_check.py"
    result = subprocess.run(
        ["unshare", "--net", "--map-root-user", "--",
         sys.executable, str(script), str(tiny_model_dir), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "interfaces: lo" in result.stdout
    assert "routes: 0" in result.stdout
    assert "chat: ok" in result.stdout
