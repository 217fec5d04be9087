"""`pull`: make a directory hold exactly a locked manifest's files, verified.

The files are gathered in a staging directory next to the destination (`.<name>.partial`):
kept from an earlier verified pull, resumed from an interrupted one, downloaded from the Hub,
copied from a local directory or built by a recipe. Each is checked against the manifest's
size and sha256 as it arrives, config.json against the architecture facts, and only then is
the staging directory renamed to the destination, with a marker of the finished verification.
A failure at any point leaves the destination as it was: never a half-verified directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zarf_vllm.model.errors import FileVerificationError, WeightsError
from zarf_vllm.model.hashing import map_parallel, sha256_file
from zarf_vllm.model.manifest import (
    HuggingFaceSource,
    LocalSource,
    ManifestFile,
    ModelManifest,
    RecipeSource,
    adapter_dir,
    weights_key,
)
from zarf_vllm.model.verify import check_sizes, locked_files
from zarf_vllm.packaging.weights.architecture import check_architecture
from zarf_vllm.packaging.weights.marker import (
    MARKER_NAME,
    FileRecord,
    Marker,
    is_verified,
    read_marker,
    write_marker,
)

PARTIAL_DIR = ".partial"
RECIPE_DIR = ".recipe"
DOWNLOAD_WORKERS = 4

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"pull: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Recipe wheels and default model directories: $ZARF_VLLM_CACHE, else
    ${XDG_CACHE_HOME:-~/.cache}/zarf-vllm (the cache the other build scripts share)."""
    if os.environ.get("ZARF_VLLM_CACHE"):
        return Path(os.environ["ZARF_VLLM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zarf-vllm"


def default_dest(manifest: ModelManifest) -> Path:
    return cache_dir() / "models" / manifest.id


@dataclass
class PullResult:
    directory: Path
    skipped: bool  # already verified: nothing was read or written
    kept: list[str] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """One pull per destination at a time (two `scripts/demo` runs, say)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _guard_foreign_files(dest: Path, files: Sequence[ManifestFile]) -> None:
    """pull replaces the destination; refuse if it holds files that are not ours to drop."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise WeightsError(f"{dest} exists and is not a directory")
    old = read_marker(dest)
    ours = {f.path for f in files} | set(old.files if old else ()) | {MARKER_NAME}
    foreign = sorted(
        str(p.relative_to(dest))
        for p in dest.rglob("*")
        if p.is_file() and str(p.relative_to(dest)) not in ours
    )
    if foreign:
        raise WeightsError(
            f"{dest} holds files the manifest does not list ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); pull replaces the whole directory: "
            "choose another --dest or remove them"
        )


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link leaves the source directory intact at no cost; a copy where links fail."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class _Staging:
    """The staging directory and the marker that records each file verified into it."""

    def __init__(self, dest: Path, manifest: ModelManifest) -> None:
        self.dir = dest.parent / f".{dest.name}.partial"
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = read_marker(self.dir)
        # Records of another key still vouch for files by sha256; only the key changes.
        self.marker = Marker(key=weights_key(manifest), files=marker.files if marker else {})
        self.files = locked_files(manifest)

    def has(self, entry: ManifestFile) -> bool:
        return self.marker.vouches_for(self.dir, entry)

    def accept(self, entry: ManifestFile, source: Path, *, link: bool = False) -> None:
        """`source` holds the verified bytes of `entry`: move (or hard-link) it in, record it."""
        target = self.dir / entry.path
        if source != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            if link:
                _link_or_copy(source, target)
            else:
                os.replace(source, target)
        # Readable by the serving user (UID 65532) when the directory is copied to a volume.
        target.chmod(0o644)
        self.marker.files[entry.path] = FileRecord.of(target, entry.sha256)
        write_marker(self.dir, self.marker)

    def partial(self, entry: ManifestFile) -> Path:
        return self.dir / PARTIAL_DIR / entry.path

    def finish(self, dest: Path) -> None:
        """Drops leftovers, marks the verification complete, swaps the directory in."""
        wanted = {f.path for f in self.files} | {MARKER_NAME}
        for name in (PARTIAL_DIR, RECIPE_DIR):
            shutil.rmtree(self.dir / name, ignore_errors=True)
        for path in sorted(self.dir.rglob("*"), reverse=True):
            relative = str(path.relative_to(self.dir))
            if path.is_file() and relative not in wanted:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        self.marker.files = {f.path: self.marker.files[f.path] for f in self.files}
        self.marker.complete = True
        write_marker(self.dir, self.marker)
        old = dest.parent / f".{dest.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        self.dir.rename(dest)
        shutil.rmtree(old, ignore_errors=True)


def _keep_existing(staging: _Staging, dest: Path, todo: list[ManifestFile], log: Log) -> None:
    """Moves into staging the files an earlier run already has right; removes them from todo."""
    dest_marker = read_marker(dest) if dest.is_dir() else None
    unsure: list[tuple[ManifestFile, Path]] = []
    for entry in list(todo):
        if staging.has(entry):
            todo.remove(entry)
        elif dest_marker is not None and dest_marker.vouches_for(dest, entry):
            staging.accept(entry, dest / entry.path, link=True)
            todo.remove(entry)
        else:
            for candidate in (staging.dir / entry.path, dest / entry.path):
                if candidate.is_file() and candidate.stat().st_size == entry.size:
                    unsure.append((entry, candidate))
                    break
    if unsure:
        log(f"hashing {len(unsure)} file(s) found from an earlier run")
    hashed = map_parallel(lambda pair: sha256_file(pair[1]), unsure)
    for (entry, candidate), digest in hashed:
        if digest == entry.sha256:
            staging.accept(entry, candidate, link=candidate.is_relative_to(dest))
            todo.remove(entry)


def _fetch_hub(
    staging: _Staging,
    source: HuggingFaceSource,
    todo: list[ManifestFile],
    workers: int,
    prefix: str = "",
) -> None:
    from zarf_vllm.packaging.weights.hub import (
        download_file,  # huggingface_hub loads only when something downloads
    )

    assert source.revision is not None  # a locked manifest
    revision = source.revision

    def fetch(entry: ManifestFile) -> Path:
        target = staging.dir / entry.path
        in_repo = entry.model_copy(update={"path": entry.path.removeprefix(prefix)})
        download_file(source.repo, revision, in_repo, staging.partial(entry), target)
        return target

    for entry, path in map_parallel(fetch, sorted(todo, key=lambda f: -f.size), workers):
        staging.accept(entry, path)


def _check_and_accept(staging: _Staging, entry: ManifestFile, path: Path) -> None:
    if not path.is_file():
        raise FileVerificationError.missing(entry.path, path.parent)
    size = path.stat().st_size
    if size != entry.size:
        raise FileVerificationError.mismatch(entry.path, "size", entry.size, size)
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise FileVerificationError.mismatch(entry.path, "sha256", entry.sha256, actual)
    staging.accept(entry, path)


def _fetch_local(
    staging: _Staging, source: LocalSource, todo: list[ManifestFile], prefix: str = ""
) -> None:
    root = Path(source.path)

    def copy(entry: ManifestFile) -> Path:
        relative = entry.path.removeprefix(prefix)
        if not (root / relative).is_file():
            raise FileVerificationError.missing(relative, root)
        target = staging.partial(entry)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / relative, target)
        return target

    for entry, path in map_parallel(copy, todo):
        _check_and_accept(staging, entry, path)


def _fetch_recipe(
    staging: _Staging, source: RecipeSource, todo: list[ManifestFile], log: Log
) -> None:
    from zarf_vllm.packaging.recipes import run_recipe  # recipes may load torch: only when one runs

    work = staging.dir / RECIPE_DIR
    shutil.rmtree(work, ignore_errors=True)
    log(f"building with recipe {source.recipe} from {source.package} (connected side only)")
    run_recipe(source, work, cache_dir())
    for entry in todo:
        _check_and_accept(staging, entry, work / entry.path)


Source = HuggingFaceSource | LocalSource | RecipeSource


def _by_source(
    manifest: ModelManifest, todo: list[ManifestFile]
) -> list[tuple[Source, str, list[ManifestFile]]]:
    """The files still to fetch, grouped by where they come from: the model's source, then
    each adapter's, with the prefix (adapters/<name>/) their paths carry in the directory."""
    left = {f.path: f for f in todo}
    groups: list[tuple[Source, str, list[ManifestFile]]] = []
    for adapter in manifest.adapters:
        prefix = f"{adapter_dir(adapter.name)}/"
        group = [left.pop(f.path) for f in adapter.placed_files() if f.path in left]
        if group:
            groups.append((adapter.source, prefix, group))
    if left:
        groups.insert(0, (manifest.source, "", list(left.values())))
    return groups


def pull(
    manifest: ModelManifest,
    dest: Path | str,
    *,
    workers: int = DOWNLOAD_WORKERS,
    log: Log = _stderr,
) -> PullResult:
    """Makes `dest` hold exactly the manifest's files, verified; skips all work when a
    finished verification of the same weights is recorded there and nothing changed.

    Raises `UnlockedManifestError` for an unlocked manifest, `FileVerificationError` naming
    the file (expected and actual) on a mismatch, `ArchitectureMismatchError` when config.json
    contradicts the manifest; in every failure `dest` is left as it was.
    """
    dest = Path(dest).absolute()
    files = locked_files(manifest)
    with _exclusive(dest):
        if is_verified(dest, manifest):
            return PullResult(dest, skipped=True)
        _guard_foreign_files(dest, files)
        staging = _Staging(dest, manifest)
        todo = list(files)
        _keep_existing(staging, dest, todo, log)
        kept = sorted({f.path for f in files} - {f.path for f in todo})
        if todo:
            total = sum(f.size for f in todo)
            log(f"{len(kept)} file(s) already verified, {len(todo)} to fetch ({total:,} bytes)")
        for source, prefix, group in _by_source(manifest, todo):
            if isinstance(source, HuggingFaceSource):
                _fetch_hub(staging, source, group, workers, prefix)
            elif isinstance(source, LocalSource):
                _fetch_local(staging, source, group, prefix)
            else:
                _fetch_recipe(staging, source, group, log)
        check_sizes(staging.dir, files)
        check_architecture(staging.dir, manifest)
        staging.finish(dest)
    return PullResult(dest, skipped=False, kept=kept, fetched=sorted(f.path for f in todo))
