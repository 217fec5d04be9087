"""The demo model's image in a real Docker engine, run as the chart's CPU profile runs it.

One container serves every test here (see conftest.served_backend); the last test stops it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest
from docker.models.containers import Container

from support.backend_process import json_event
from support.container_serving import ServedBackend, health_status
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

CAPITAL_QUESTION = "What is the capital of France?"


def chat(content: str, max_new_tokens: int, **fields: object) -> chat_pb2.ChatCompletionRequest:
    return chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=content)],
        max_new_tokens=max_new_tokens,
        **fields,
    )


def test_health_goes_serving(served_backend: ServedBackend) -> None:
    # The server answers NOT_SERVING while the engine loads, then SERVING.
    assert "NOT_SERVING" in served_backend.statuses
    assert served_backend.statuses[-1] == "SERVING"
    assert served_backend.seconds_to_serving < served_backend.spec.startup_budget_s
    assert health_status(served_backend.address) == "SERVING"


def test_the_container_runs_with_the_chart_settings(served_backend: ServedBackend) -> None:
    container = served_backend.container
    container.reload()
    host = container.attrs["HostConfig"]
    spec = served_backend.spec
    assert container.attrs["Config"]["User"] == spec.user == "65532:65532"
    assert host["ReadonlyRootfs"] is True
    assert [c.upper() for c in host["CapDrop"]] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == spec.memory_limit > 0
    assert host["NanoCpus"] > 0
    assert set(host["Tmpfs"]) == set(spec.tmpfs) >= {"/tmp"}
    assert host["NetworkMode"] == "none"

    code, out = served_backend.exec_python(
        "import os, json\n"
        "try:\n"
        "    open('/opt/probe', 'w'); root = 'writable'\n"
        "except OSError as exc:\n"
        "    root = exc.strerror\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'root': root,\n"
        "                  'tmp_writable': os.access('/tmp', os.W_OK)}))\n"
    )
    assert code == 0, out
    facts = json.loads(out)
    assert facts == {"uid": 65532, "gid": 65532, "root": "Read-only file system",
                     "tmp_writable": True}  # fmt: skip


def test_greedy_chat_answers_paris(served_backend: ServedBackend) -> None:
    with grpc.insecure_channel(served_backend.address) as channel:
        response = chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(
            chat(CAPITAL_QUESTION, 48, temperature=0.0), timeout=120
        )
    choice = response.choices[0]
    assert "Paris" in choice.chat_item.content
    assert choice.chat_item.role == chat_pb2.ASSISTANT
    assert choice.finish_reason == chat_pb2.STOP


def test_stream_ends_with_stop_and_usage(served_backend: ServedBackend) -> None:
    with grpc.insecure_channel(served_backend.address) as channel:
        chunks = list(
            chat_pb2_grpc.ChatCompletionStreamServiceStub(channel).ChatCompleteStream(
                chat(CAPITAL_QUESTION, 48, temperature=0.0), timeout=120
            )
        )
    # The first token always goes out alone (it is never held back), the rest after it.
    assert len(chunks) >= 2, "the answer came in one piece, not streamed"
    text = "".join(c.choices[0].chat_item.content for c in chunks if c.choices)
    assert "Paris" in text
    last = chunks[-1]
    assert last.choices[0].finish_reason == chat_pb2.STOP
    assert all(c.choices[0].finish_reason == chat_pb2.NONE for c in chunks[:-1] if c.choices)
    usage = last.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize(
    "request_fields",
    [
        {"chat_items": [], "max_new_tokens": 8},
        {"chat_items": [chat_pb2.ChatItem(content="hi")], "max_new_tokens": 8, "temperature": -1},
    ],
    ids=["no-chat-items", "negative-temperature"],
)
def test_a_bad_request_gets_invalid_argument(
    served_backend: ServedBackend, request_fields: dict
) -> None:
    with (
        grpc.insecure_channel(served_backend.address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(
            chat_pb2.ChatCompletionRequest(**request_fields), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


NETWORK_FACTS = """
import errno, json, os, socket
v6 = "/proc/net/ipv6_route"
try:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737, documentation only): nothing is ever there.
    probe = socket.create_connection(("192.0.2.1", 443), timeout=5)
    outcome = "connected"
except OSError as exc:
    outcome = errno.errorcode.get(exc.errno, str(exc))
print(json.dumps({
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "ipv4_routes": open("/proc/net/route").read().splitlines()[1:],
    "ipv6_route_devices": sorted({l.split()[-1] for l in open(v6)}) if os.path.exists(v6) else [],
    "outbound_connect": outcome,
}))
"""


def test_it_serves_with_no_route_out(served_backend: ServedBackend) -> None:
    code, out = served_backend.exec_python(NETWORK_FACTS)
    assert code == 0, out
    facts = json.loads(out)
    assert facts["interfaces"] == ["lo"]
    assert facts["ipv4_routes"] == []
    assert set(facts["ipv6_route_devices"]) <= {"lo"}
    assert facts["outbound_connect"] == "ENETUNREACH"
    # ...and it serves all the same.
    with grpc.insecure_channel(served_backend.address) as channel:
        response = chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(
            chat(CAPITAL_QUESTION, 8, temperature=0.0), timeout=60
        )
    assert response.usage.completion_tokens > 0


def log_events(container: Container, message: str) -> list[dict]:
    """The server's JSON log events with this message."""
    lines = container.logs().decode(errors="replace").splitlines()
    events = (json_event(line) for line in lines)
    return [e for e in events if e and e.get("message") == message]


def eos_token_id(weights: Path) -> int:
    return int(json.loads((weights / "generation_config.json").read_text())["eos_token_id"])


def test_docker_stop_drains_an_in_flight_stream(
    served_backend: ServedBackend, demo_weights: Path
) -> None:
    """Last test of the session: it stops the shared container.

    `docker stop` (SIGTERM, as the kubelet sends) comes right after the stream's first chunk;
    the rest must still arrive, end normally, and the container must exit 0. The answer is
    short enough to finish well inside the server's drain timeout on a busy 2-core machine.
    """
    tokens = 24
    request = chat(
        "Tell me a long story about a lighthouse keeper.",
        tokens,
        temperature=0.0,
        logit_bias={str(eos_token_id(demo_weights)): -100},  # no early end: runs to `tokens`
    )
    container = served_backend.container
    stopped: dict[str, float] = {}

    def docker_stop() -> None:
        stopped["at"] = time.monotonic()
        container.stop(timeout=served_backend.spec.termination_grace_s)  # SIGTERM, then waits

    stopper = threading.Thread(target=docker_stop)
    arrivals: list[float] = []
    with grpc.insecure_channel(served_backend.address) as channel:
        stream = chat_pb2_grpc.ChatCompletionStreamServiceStub(channel).ChatCompleteStream(
            request, timeout=300
        )
        for chunk in stream:
            arrivals.append(time.monotonic())
            if len(arrivals) == 1:
                stopper.start()
            last = chunk
    stopper.join(timeout=served_backend.spec.termination_grace_s + 30)
    assert sum(1 for at in arrivals if at > stopped["at"]) > 0, "nothing arrived after SIGTERM"
    # The server's own account: the stream was still in flight when SIGTERM came.
    assert [e["in_flight"] for e in log_events(container, "stop requested; draining")] == [1]
    assert last.choices[0].finish_reason == chat_pb2.LENGTH
    assert last.usage.completion_tokens == tokens
    assert container.wait(timeout=60)["StatusCode"] == 0
    assert health_status(served_backend.address) != "SERVING"
