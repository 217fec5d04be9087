"""Two nodes on loopback: the leader (`serve`, the gRPC API and the engine) and one worker
(`worker`), pipeline parallel 2 across them with vLLM's own multi-node support, on the real
CPU engine. The greedy chat through gRPC equals the single-process backend's.

Each node gets its own core (VLLM_CPU_OMP_THREADS_BIND): vLLM-CPU binds every rank's OpenMP
threads and refuses two ranks on one NUMA node without an explicit list. The engine compiles
(enforce_eager false): eager pipeline parallel fails on vLLM-CPU 0.32 at the first request
(cpu_model_runner.py's warm-up returns early without compilation, so the last stage never
allocates its intermediate tensors). VLLM_HOST_IP keeps vLLM's message queues on loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from support.backend_process import CPU_TEST_SETTINGS, BackendProcess, deep_merge
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

NO_EOS = {"0": -100}  # tiny_model's "<|end|>": every answer runs to max_new_tokens
MAX_NEW_TOKENS = 24
# Start-up of both nodes with torch.compile on a busy 2-core machine: 1-4 minutes.
START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multinode_settings(port: int) -> dict:
    engine = {
        "enforce_eager": False,
        "max_model_len": 1024,
        "pipeline_parallel_size": 2,
        "nnodes": 2,
        "master_addr": "127.0.0.1",
        "master_port": port,
    }
    return {"engine": engine}


def node_env(core: int) -> dict[str, str]:
    return {"VLLM_CPU_OMP_THREADS_BIND": str(core), "VLLM_HOST_IP": "127.0.0.1"}


@pytest.fixture(scope="module")
def two_nodes(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BackendProcess, subprocess.Popen[str]]]:
    workdir = tmp_path_factory.mktemp("multinode")
    settings = multinode_settings(free_port())
    worker_config = workdir / "worker.yaml"
    worker_config.write_text(yaml.safe_dump(deep_merge(CPU_TEST_SETTINGS, settings)))
    worker_log = (workdir / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "zarf_vllm.backend", "worker",
            "--model", str(tiny_model_dir), "--config", str(worker_config), "--node-rank", "1",
        ],
        stdout=worker_log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", **node_env(1)},
    )  # fmt: skip
    leader = BackendProcess(tiny_model_dir, workdir, settings, extra_env=node_env(0))
    leader.start()
    try:
        try:
            leader.wait_serving(timeout=START_TIMEOUT_S)
        except (TimeoutError, RuntimeError) as exc:
            worker_text = (workdir / "worker.log").read_text()
            raise AssertionError(f"{exc}\nworker:\n{worker_text}") from exc
        yield leader, worker
    finally:
        leader.stop()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(30)
        worker_log.close()


def greedy_chat(address: str) -> chat_pb2.ChatCompletionResponse:
    request = chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content="Tell me about the sea")],
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=0,
        logit_bias=NO_EOS,
    )
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatCompletionServiceStub(channel)
        return stub.ChatComplete(request, timeout=120)


def test_two_nodes_answer_as_one(
    two_nodes: tuple[BackendProcess, subprocess.Popen[str]], tiny_backend: BackendProcess
) -> None:
    leader, worker = two_nodes
    assert worker.poll() is None, "the worker node exited while the leader served"
    across_nodes = greedy_chat(leader.address)
    one_process = greedy_chat(tiny_backend.address)
    assert across_nodes.usage.completion_tokens == MAX_NEW_TOKENS
    text = across_nodes.choices[0].chat_item.content
    assert text, "the two-node engine answered nothing"
    assert text == one_process.choices[0].chat_item.content


def test_the_worker_exits_when_the_leader_stops(
    two_nodes: tuple[BackendProcess, subprocess.Popen[str]],
) -> None:
    """A worker without its leader must end, so that Kubernetes restarts the group."""
    leader, worker = two_nodes
    leader.stop()
    assert worker.wait(90) != 0
