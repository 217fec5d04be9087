"""Fixtures of the container tests: the images as the project's scripts build them, and the
demo model's image started with the chart's container settings, reachable only through a port
published on 127.0.0.1.

Everything is built and started once per session: the backend image (scripts/build-images,
cached by the engine's layer cache), the demo weights (scripts/pull, cached), the model image
(scripts/image) and one served container that the tests share; the last test stops it.
"""

from __future__ import annotations

import os

# testcontainers' reaper (Ryuk) is an image from a registry, and no registry is reachable
# from the build hosts; these fixtures remove their own containers instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from testcontainers.core.container import DockerContainer

from support.container_deployment import ROOT, BackendContainer, backend_container, preview_objects
from support.container_serving import (
    DEMO_MODEL,
    REPORT,
    ServedBackend,
    image_size,
    relays,
    run_step,
    wait_serving,
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("container tests: images and timings")
        for key, value in REPORT.items():
            terminalreporter.write_line(f"{key}: {value}")


@pytest.fixture(scope="session")
def docker_engine() -> None:
    run_step("docker engine", [str(ROOT / "scripts/docker-engine")], 600)


@pytest.fixture(scope="session")
def backend_image(docker_engine: None) -> str:
    tag = run_step(
        "backend image build", [str(ROOT / "scripts/build-images"), "--flavor", "cpu"], 3600
    )
    REPORT["backend image size"] = image_size(tag)
    return tag


@pytest.fixture(scope="session")
def demo_weights() -> Path:
    return Path(run_step("demo weights", [str(ROOT / "scripts/pull"), DEMO_MODEL], 1800))


@pytest.fixture(scope="session")
def model_image(backend_image: str, demo_weights: Path) -> str:
    tag = run_step(
        "model image build",
        [str(ROOT / "scripts/image"), DEMO_MODEL, "--flavor", "cpu",
         "--base", backend_image, "--weights", str(demo_weights)],
        1800,
    )  # fmt: skip
    REPORT["model image size"] = image_size(tag)
    return tag


@pytest.fixture(scope="session")
def deployment() -> BackendContainer:
    """The backend container of the Deployment the chart renders for the CPU profile."""
    return backend_container(preview_objects("PROFILE=cpu"))


@pytest.fixture(scope="session")
def served_backend(
    model_image: str,
    backend_image: str,
    deployment: BackendContainer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedBackend]:
    """The model image, run with the Deployment's settings and no network at all; the test
    reaches it through two relays (container_relay.py) and a port published on 127.0.0.1."""
    assert deployment.image == model_image, "the chart must run the model image built here"
    work = tmp_path_factory.mktemp("served")
    name = f"zarf-vllm-test-{uuid.uuid4().hex[:8]}"
    port = deployment.grpc_port
    model = deployment.testcontainer(model_image, work / "files", network_mode="none").with_name(
        name
    )
    relayed = relays(backend_image, name, work, [port])
    started: list[DockerContainer] = []
    try:
        start = time.monotonic()
        for container in (model, relayed.inner, relayed.outer):
            started.append(container.start())
        address = relayed.addresses()[port]
        statuses = wait_serving(address, model, deployment.startup_budget_s)
        seconds = time.monotonic() - start
        REPORT["docker run to SERVING, demo model (s)"] = f"{seconds:.1f}"
        if deployment.notes:
            REPORT["differences from the Deployment"] = "; ".join(deployment.notes)
        yield ServedBackend(address, model, deployment, statuses, seconds)
    finally:
        for container in reversed(started):
            container.stop()


# The cuda image (tests/containers/test_cuda_image.py, marker `cuda`) needs a 3.7 GB wheelhouse
# and about 22 minutes cold on 2 cores. It is built when that wheelhouse is already cached, or
# always with ZARF_VLLM_CUDA_TESTS=1 (scripts/test sets it: a cold run downloads and builds it);
# ZARF_VLLM_CUDA_TESTS=0 skips it. CONTRIBUTING.md ("The cuda image in the test run") has the
# measurements behind this.
CUDA_TESTS = os.environ.get("ZARF_VLLM_CUDA_TESTS", "auto")


def _cuda_wheelhouse_cached() -> bool:
    check = [str(ROOT / "scripts/wheelhouse"), "--flavor", "cuda", "--check"]
    return subprocess.run(check, cwd=ROOT, capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def cuda_report() -> dict[str, str]:
    return REPORT


@pytest.fixture(scope="session")
def cuda_backend_image(docker_engine: None) -> str:
    if CUDA_TESTS == "0":
        pytest.skip("ZARF_VLLM_CUDA_TESTS=0")
    if CUDA_TESTS != "1" and not _cuda_wheelhouse_cached():
        pytest.skip(
            "the cuda wheelhouse is not cached: run scripts/wheelhouse --flavor cuda "
            "(3.7 GB) or set ZARF_VLLM_CUDA_TESTS=1"
        )
    tag = run_step(
        "cuda backend image build", [str(ROOT / "scripts/build-images"), "--flavor", "cuda"], 3600
    )
    REPORT["cuda backend image size"] = image_size(tag)
    return tag


@pytest.fixture(scope="session")
def cuda_model_image(cuda_backend_image: str, demo_weights: Path) -> str:
    tag = run_step(
        "cuda model image build",
        [str(ROOT / "scripts/image"), DEMO_MODEL, "--flavor", "cuda",
         "--base", cuda_backend_image, "--weights", str(demo_weights)],
        1800,
    )  # fmt: skip
    REPORT["cuda model image size"] = image_size(tag)
    return tag
