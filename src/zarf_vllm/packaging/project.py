"""The package's sources: the directory `zarf package create` runs in.

The packaging tool reads `zarf.yaml`, `chart/` and `model-manifests/` from there
(`ZARF_VLLM_PROJECT`, else the current directory; the `scripts/` wrappers set it to their
checkout), never from wherever this Python package happens to be installed.
"""

from __future__ import annotations

import os
from pathlib import Path

from zarf_vllm.model.manifest import ManifestError

PROJECT_ENV = "ZARF_VLLM_PROJECT"
DEMO_MANIFEST_ID = "smollm2-135m-instruct"


def root() -> Path:
    return Path(os.environ.get(PROJECT_ENV) or Path.cwd())


def chart_dir() -> Path:
    return root() / "chart"


def manifests_dir() -> Path:
    return root() / "model-manifests"


def zarf_yaml() -> Path:
    return root() / "zarf.yaml"


def demo_manifest() -> Path:
    """The embedded demo model: what `preview` renders when no manifest is named."""
    return manifests_dir() / f"{DEMO_MANIFEST_ID}.yaml"


def find_manifest(name: str | Path) -> Path:
    """A manifest file's path from a path, or from a bare id looked up in the project's
    model-manifests/."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists() or len(path.parts) > 1:
        return path
    candidate = manifests_dir() / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    raise ManifestError(
        f"no manifest {name!r}: give a path, or an id in {manifests_dir()}/ "
        f"(the project directory is {PROJECT_ENV}, else the current directory)"
    )
