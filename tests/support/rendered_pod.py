"""A pod as the chart renders it, run here: the backend started on the rendered config.yaml and
the container's env, with the model image's paths moved to this machine's copies.

tests/engine/test_rendered_config.py serves every cpu-profile manifest this way, and
bench/quantized_cpu.py measures the models in the configuration the chart gives them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from support.backend_process import BackendProcess
from support.paths import MANIFESTS
from support.profiles_fixtures import config_of, deployment_of, run_preview
from zarf_vllm.model.manifest import ModelManifest
from zarf_vllm.packaging.model_image import model_paths
from zarf_vllm.packaging.preview import Preview

# Variables of this process that would steer the child past the rendered config and env: the
# backend's own settings (BACKEND_*: env beats the config file) and the engine's (VLLM_*, OMP_*).
STEERING_PREFIXES = ("BACKEND_", "VLLM_", "OMP_")
# The pod's /tmp is its own empty volume; here it becomes a fresh directory per start, so the
# caches start empty as in a new pod and nothing lands in this machine's shared /tmp.
POD_TMP = "/tmp"


@dataclass
class Rendered:
    """One manifest's chart output, reduced to what the backend container gets."""

    config_text: str  # config.yaml as the ConfigMap holds it
    config: dict[str, Any]  # the same, parsed
    env: dict[str, str]
    memory_limit_bytes: int


def render(manifest_id: str, **sets: str) -> Rendered:
    """The chart's output for `manifest_id` with the deploy variables `sets` (PROFILE...)."""
    result = run_preview(manifest_id, **sets)
    assert isinstance(result, Preview), f"the chart refused {manifest_id} with {sets}: {result}"
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


def rendered_backend(
    model: ModelManifest, model_dir: Path, rendered: Rendered, tmp_path: Path
) -> BackendProcess:
    """The backend (not started yet) on the rendered config and env, in `tmp_path`."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(local_config(rendered, model, model_dir))
    pod_tmp = tmp_path / "pod-tmp"
    pod_tmp.mkdir()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(STEERING_PREFIXES)}
    # The one departure from the pod: the rendered ports (50051, 9090, 8000) are the pod's own
    # network namespace; on this shared machine the server takes free ones, for the ports the
    # rendered config opens.
    server = rendered.config.get("server") or {}
    free_ports = {
        f"BACKEND_SERVER__{key.upper()}": "0"
        for key in ("port", "metrics_port", "openai_port")
        if server.get(key, 0) is not None
    }
    backend = BackendProcess(
        None,
        tmp_path,
        config_file=config_file,
        base_env=base_env,
        extra_env={**pod_environment(rendered.env, model, model_dir, pod_tmp), **free_ports},
    )
    return backend
