"""A local directory's files as a manifest records them (lock's local and recipe sources)."""

from __future__ import annotations

from pathlib import Path

from zarf_vllm.model.hashing import sha256_files
from zarf_vllm.model.manifest import ManifestFile


def relative_files(directory: Path) -> list[str]:
    """Every file under `directory`, as sorted paths relative to it."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def hash_files(directory: Path, paths: list[str]) -> list[ManifestFile]:
    """`paths` (relative to `directory`) with their sizes and sha256s."""
    digests = sha256_files([directory / p for p in paths])
    return [
        ManifestFile(path=p, size=(directory / p).stat().st_size, sha256=digests[directory / p])
        for p in paths
    ]
