"""The model image's weight layers are reproducible: a second build gives the same digests, so
a registry or Zarf stores and moves them once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.container_deployment import ROOT
from support.container_serving import DEMO_MODEL, run_step
from zarf_vllm.model.manifest import load_manifest

REBUILD_TAG = f"zarf.internal/zarf-vllm/model-{DEMO_MODEL}:rebuild-test"


def layers(tag: str) -> list[str]:
    inspect = subprocess.run(
        ["docker", "image", "inspect", tag], capture_output=True, text=True, check=True
    )
    return json.loads(inspect.stdout)[0]["RootFS"]["Layers"]


def test_weight_layers_are_identical_when_built_twice(
    model_image: str, backend_image: str, demo_weights: Path
) -> None:
    weight_files = len(load_manifest(ROOT / f"model-manifests/{DEMO_MODEL}.yaml").files)
    try:
        run_step(
            "model image rebuild",
            [str(ROOT / "scripts/image"), DEMO_MODEL, "--flavor", "cpu", "--base", backend_image,
             "--weights", str(demo_weights), "--tag", REBUILD_TAG],
            1800,
        )  # fmt: skip
        first, second = layers(model_image), layers(REBUILD_TAG)
    finally:
        subprocess.run(["docker", "image", "rm", REBUILD_TAG], capture_output=True, check=False)
    base = layers(backend_image)
    # One layer per weight file on top of the backend's layers (and the manifest's layer).
    assert first[: len(base)] == base
    assert len(first) == len(base) + 1 + weight_files
    weights_first, weights_second = first[-weight_files:], second[-weight_files:]
    assert len(set(weights_first)) == weight_files
    assert weights_second == weights_first
