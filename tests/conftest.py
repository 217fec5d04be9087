"""Shared fixtures: the few-MB random Llama and a backend serving it (started once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from support.backend_process import BackendProcess
from support.tiny_model import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_backend(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendProcess]:
    """The backend on the tiny model, shared by the tests that need a healthy server."""
    backend = BackendProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("tiny-backend"),
        {"engine": {"max_model_len": 1024}, "limits": {"max_in_flight": 64, "max_n": 4}},
    ).start()
    try:
        backend.wait_serving()
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="session")
def tiny_channel(tiny_backend: BackendProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(tiny_backend.address) as channel:
        yield channel
