"""What the container tests share: running the project's scripts, the served backend and
its helper containers, and the numbers reported at the end of the run."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from docker.models.containers import Container
from grpc_health.v1 import health_pb2, health_pb2_grpc
from testcontainers.core.container import DockerContainer

from support.container_deployment import ROOT, BackendContainer

DEMO_MODEL = "smollm2-135m-instruct"
RELAY_SCRIPT = Path(__file__).with_name("container_relay.py")

# Shown at the end of the run (pytest_terminal_summary): what the issue asks to report.
REPORT: dict[str, str] = {}


def run_step(name: str, argv: list[str], timeout_s: float) -> str:
    """Runs one of the project's scripts; returns the last line it printed on stdout (its
    result: an image tag, a directory), or "" when it printed nothing."""
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv)} took longer than {timeout_s:.0f}s")
    REPORT[f"{name} (s)"] = f"{time.monotonic() - start:.1f}"
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def image_size(tag: str) -> str:
    size = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", tag],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return f"{int(size) / 1e9:.2f} GB"


@dataclass
class ServedBackend:
    address: str  # 127.0.0.1:PORT
    model: DockerContainer
    spec: BackendContainer
    statuses: list[str]  # health answers while starting, repeats folded
    seconds_to_serving: float

    @property
    def container(self) -> Container:
        return self.model.get_wrapped_container()

    def exec_python(self, code: str) -> tuple[int, str]:
        """Runs Python in the serving container, as its user: (exit code, stdout), or the
        exit code and stderr when it failed."""
        result = self.container.exec_run(["/opt/venv/bin/python", "-c", code], demux=True)
        stdout, stderr = (part.decode() if part else "" for part in result.output)
        return result.exit_code, stdout if result.exit_code == 0 else stderr


def health_status(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def relay(image: str, name: str, relay_dir: Path, command: list[str], **kwargs) -> DockerContainer:
    """A helper container running container_relay.py, as unprivileged as the backend."""
    return (
        DockerContainer(image)
        .with_name(name)
        .with_volume_mapping(relay_dir, "/relay", "rw")
        .with_volume_mapping(RELAY_SCRIPT, "/relay-bin/container_relay.py", "ro")
        .with_command(command)
        .with_kwargs(
            entrypoint=["/opt/venv/bin/python", "/relay-bin/container_relay.py"],
            user="65532:65532",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            **kwargs,
        )
    )


@dataclass
class Relays:
    """The two relay containers that carry `ports` of the container `name` (which has no
    network) to ports published on 127.0.0.1: `inner` in its network namespace, `outer` on the
    bridge. Start them after that container."""

    inner: DockerContainer
    outer: DockerContainer
    ports: tuple[int, ...]

    def addresses(self) -> dict[int, str]:
        """Each container port's published address, 127.0.0.1:P (once `outer` runs)."""
        published = self.outer.get_wrapped_container()
        published.reload()
        addresses = {}
        for port in self.ports:
            (binding,) = published.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"]
            assert binding["HostIp"] == "127.0.0.1"
            addresses[port] = f"127.0.0.1:{binding['HostPort']}"
        return addresses


def relays(image: str, name: str, work: Path, ports: list[int]) -> Relays:
    """The relays of `ports` of the container `name`, with their sockets under work/relay."""
    relay_dir = work / "relay"
    relay_dir.mkdir()
    relay_dir.chmod(0o777)  # the relays run as 65532
    sockets = [f"/relay/port-{port}.sock" for port in ports]
    inner_args = [arg for s, p in zip(sockets, ports, strict=True) for arg in (s, str(p))]
    outer_args = [arg for s, p in zip(sockets, ports, strict=True) for arg in (str(p), s)]
    inner = relay(
        image, f"{name}-relay-in", relay_dir, ["unix", *inner_args],
        network_mode=f"container:{name}",
    )  # fmt: skip
    outer = relay(image, f"{name}-relay-out", relay_dir, ["tcp", *outer_args])
    for port in ports:
        outer.ports[f"{port}/tcp"] = ("127.0.0.1", None)  # docker-py: (host address, any port)
    return Relays(inner, outer, tuple(ports))


def log_digest(model: DockerContainer) -> str:
    """The container's error lines (the root cause is often far above the last traceback),
    then the end of its log."""
    lines = model.get_wrapped_container().logs().decode(errors="replace").splitlines()
    errors = list(dict.fromkeys(line for line in lines if "Error:" in line))[:10]
    return "\n".join(["errors:", *errors, "last lines:", *lines[-25:]])


def wait_serving(address: str, model: DockerContainer, budget_s: float) -> list[str]:
    statuses: list[str] = []
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        status = health_status(address)
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        if status == "SERVING":
            return statuses
        container = model.get_wrapped_container()
        container.reload()
        if container.status != "running":
            pytest.fail(f"the backend container stopped ({container.status}):\n{log_digest(model)}")
        time.sleep(0.5)
    pytest.fail(
        f"not SERVING within the startup probe's {budget_s:.0f}s ({statuses}):\n{log_digest(model)}"
    )
