"""Verify a weights directory against its manifest: every listed file, its size and sha256.

`verify_directory` is the function the server calls at start-up (BACKEND_MODEL__VERIFY) and
`python -m zarf_vllm.packaging verify` runs; keep its signature stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from zarf_vllm.model.errors import FileVerificationError, UnlockedManifestError
from zarf_vllm.model.hashing import map_parallel, sha256_file
from zarf_vllm.model.manifest import ManifestFile, ModelManifest

VerifyMode = Literal["size", "full"]
VERIFY_MODES: tuple[VerifyMode, ...] = ("size", "full")


def locked_files(manifest: ModelManifest) -> list[ManifestFile]:
    """The manifest's files, then its adapters' (placed under adapters/<name>/); an unlocked
    manifest has nothing to verify against."""
    if not manifest.locked or manifest.files is None:
        raise UnlockedManifestError(
            f"manifest {manifest.id!r} is unlocked (no pinned revision and files, for the "
            "model and each adapter): run `python -m zarf_vllm.packaging lock MANIFEST` on a "
            "connected machine first"
        )
    adapter_files = [f for adapter in manifest.adapters for f in adapter.placed_files()]
    return [*manifest.files, *adapter_files]


def check_sizes(directory: Path, files: Sequence[ManifestFile]) -> None:
    """Every file exists and has the manifest's size (a stat each: fast)."""
    for entry in files:
        path = directory / entry.path
        if not path.is_file():
            raise FileVerificationError.missing(entry.path, directory)
        size = path.stat().st_size
        if size != entry.size:
            raise FileVerificationError.mismatch(entry.path, "size", entry.size, size)


def check_hashes(
    directory: Path, files: Sequence[ManifestFile], workers: int | None = None
) -> None:
    """sha256 of every file, several at once; the first mismatch stops and names the file."""
    ordered = sorted(files, key=lambda f: f.size, reverse=True)
    for entry, actual in map_parallel(lambda f: sha256_file(directory / f.path), ordered, workers):
        if actual != entry.sha256:
            raise FileVerificationError.mismatch(entry.path, "sha256", entry.sha256, actual)


def verify_files(
    directory: Path, files: Sequence[ManifestFile], mode: VerifyMode, workers: int | None = None
) -> None:
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify mode must be one of {VERIFY_MODES}, not {mode!r}")
    check_sizes(directory, files)
    if mode == "full":
        check_hashes(directory, files, workers)


def verify_directory(
    path: Path | str,
    manifest: ModelManifest,
    mode: VerifyMode = "full",
    *,
    workers: int | None = None,
) -> None:
    """Raises `FileVerificationError` (its `path` names the file) unless every file the manifest
    lists is in `path` with the manifest's size and, in "full" mode, its sha256.

    Files in the directory that the manifest does not list are ignored (a volume may hold
    more). Raises `UnlockedManifestError` for a manifest without files.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileVerificationError(str(directory), "not a directory")
    verify_files(directory, locked_files(manifest), mode, workers)
