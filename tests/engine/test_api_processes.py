"""Several front-end processes on one port (server.api_processes: 2), clients of one engine core,
on the real engine: concurrent gRPC streams and OpenAI calls spread over both and complete, one
metrics port counts them all, SIGTERM stops every process with exit 0, and an engine core's or a
front end's death stops the pod with exit 1. Three engine starts of the tiny model."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import grpc
import httpx
import psutil

from support.backend_process import SERVING, BackendProcess
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

STREAMS = 64
OPENAI_CALLS = 16  # each on its own connection: both front ends get some (2 x 0.5^16 odds not)
TOKENS = 16
EOS_ID = "0"  # tiny_model's "<|end|>"
SETTINGS = {"engine": {"max_model_len": 512}, "server": {"api_processes": 2}}


def chat(i: int) -> chat_pb2.ChatCompletionRequest:
    return chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=f"Story number {i}")],
        max_new_tokens=TOKENS,
        logit_bias={EOS_ID: -100},
    )


async def stream_on_own_connection(address: str, i: int) -> chat_pb2.ChatCompletionResponse:
    # A local subchannel pool: otherwise gRPC shares one connection between the channels of a
    # process, and the kernel, which spreads connections, would see one.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = chat_pb2_grpc.ChatCompletionStreamServiceStub(channel)
        chunks = [chunk async for chunk in stub.ChatCompleteStream(chat(i))]
    return chunks[-1]


async def stream_all(address: str) -> list[chat_pb2.ChatCompletionResponse]:
    return list(
        await asyncio.gather(*(stream_on_own_connection(address, i) for i in range(STREAMS)))
    )


def openai_completions(backend: BackendProcess) -> list[httpx.Response]:
    base = f"http://127.0.0.1:{backend.openai_port}/v1"
    model = httpx.get(f"{base}/models", timeout=10).json()["data"][0]["id"]
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": TOKENS}
    # httpx.post opens a new connection each time, as LeapfrogAI's clients do.
    return [httpx.post(f"{base}/completions", json=body, timeout=60) for _ in range(OPENAI_CALLS)]


def served_by(backend: BackendProcess, method: str, calls: int) -> collections.Counter[str | None]:
    """How many OK calls of `method` (gRPC's method, or the OpenAI path) each front end logged,
    once `calls` of them are in the log or 10 s have passed: a call's log line can reach the
    test's log reader after the client has its answer."""
    deadline = time.monotonic() + 10
    while True:
        served = collections.Counter(
            e.get("process")
            for e in backend.events("request")
            if e["method"] == method and e["status"] == "OK"
        )
        if sum(served.values()) >= calls or time.monotonic() > deadline:
            return served
        time.sleep(0.05)


def pod_processes(backend: BackendProcess) -> list[psutil.Process]:
    assert backend.process is not None
    return psutil.Process(backend.process.pid).children(recursive=True)


def assert_all_gone(processes: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(processes, timeout=15)
    assert not alive, [(p.pid, p.name()) for p in alive]


def test_two_front_ends_share_the_port_the_metrics_and_the_stop(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    backend = BackendProcess(tiny_model_dir, tmp_path, SETTINGS).start()
    try:
        backend.wait_serving()
        pids = backend.events("listening")[0]["pids"]
        assert len(pids) == 2
        processes = pod_processes(backend)
        assert {p.pid for p in processes} >= set(pids)

        last_chunks = asyncio.run(stream_all(backend.address))
        assert [c.usage.completion_tokens for c in last_chunks] == [TOKENS] * STREAMS
        assert {c.choices[0].finish_reason for c in last_chunks} == {chat_pb2.LENGTH}

        responses = openai_completions(backend)
        assert [r.status_code for r in responses] == [200] * OPENAI_CALLS
        assert all(r.json()["usage"]["completion_tokens"] > 0 for r in responses)

        # Each front end logs its calls; the kernel spread the connections over both, on the
        # gRPC port and on the OpenAI port.
        for method, calls in (("ChatCompleteStream", STREAMS), ("/v1/completions", OPENAI_CALLS)):
            served = served_by(backend, method, calls)
            assert set(served) == {"FrontEnd_0", "FrontEnd_1"}, (method, served)
            assert sum(served.values()) == calls, (method, served)
        # One metrics port for the pod: both front ends' calls, and the engine's own series.
        ok = {"method": "ChatCompleteStream", "code": "OK"}
        assert backend.metric("backend_requests_total", ok) == STREAMS
        assert backend.metric("backend_requests_in_flight") == 0
        assert backend.metric("vllm:request_success_total") >= STREAMS

        backend.terminate()
        assert backend.wait(60) == 0
        assert_all_gone(processes)
        stopped = [e for e in backend.events("stopped") if "front_ends" in e]
        assert stopped[-1]["front_ends"] == {"FrontEnd_0": 0, "FrontEnd_1": 0}
    finally:
        backend.stop()


def test_an_engine_core_death_stops_every_front_end_with_exit_1(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    backend = BackendProcess(tiny_model_dir, tmp_path, SETTINGS).start()
    try:
        backend.wait_serving()
        assert backend.health() == SERVING
        processes = pod_processes(backend)
        engine = [p for p in processes if "EngineCore" in p.name()]
        assert len(engine) == 1, [p.name() for p in processes]
        engine[0].kill()
        assert backend.wait(60) == 1
        assert any(e["message"].startswith("an engine core exited") for e in backend.events())
        assert_all_gone(processes)
    finally:
        backend.stop()


def test_a_front_end_death_stops_the_pod_with_exit_1(tiny_model_dir: Path, tmp_path: Path) -> None:
    backend = BackendProcess(tiny_model_dir, tmp_path, SETTINGS).start()
    try:
        backend.wait_serving()
        pids = backend.events("listening")[0]["pids"]
        processes = pod_processes(backend)
        psutil.Process(pids[1]).kill()
        # The other front end is stopped and the engine core with it: Kubernetes restarts the
        # pod rather than keep a port where some connections land on no process.
        assert backend.wait(60) == 1
        assert any(e["message"].startswith("a front end exited") for e in backend.events())
        assert_all_gone(processes)
    finally:
        backend.stop()
