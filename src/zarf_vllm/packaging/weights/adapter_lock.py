"""`lock` for a manifest's LoRA adapters: each pinned like the model (docs/lora.md).

A Hub adapter's revision is resolved to its commit and its files come from the Hub's model
info (sizes and LFS sha256s; adapter_config.json is small and downloaded, to hash and read
it). A local adapter's files are hashed from its directory. Either way the files are the
adapter's own selection (`selection.select_adapter_files`), its weights in safetensors only,
and adapter_config.json gives the rank. An adapter that is already locked is returned as it
is, without a request: its pins are the record, as a locked model's are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zarf_vllm.model.errors import WeightsError
from zarf_vllm.model.manifest import (
    MAX_ADAPTER_RANK,
    Adapter,
    HuggingFaceSource,
    LocalSource,
    ManifestFile,
)
from zarf_vllm.packaging.weights.directory_files import hash_files, relative_files
from zarf_vllm.packaging.weights.selection import (
    ADAPTER_CONFIG,
    ADAPTER_PICKLES,
    ADAPTER_WEIGHTS,
    PICKLE_SUFFIXES,
    select_adapter_files,
)

Log = Callable[[str], None]


def lock_adapter(adapter: Adapter, base_repo: str | None, log: Log) -> Adapter:
    """The adapter with its source pinned, its files recorded and its rank read.

    `base_repo` is the model's Hub repository (None for other sources): a different base
    model named in adapter_config.json is reported through `log`, not refused.
    """
    if adapter.locked:
        return adapter
    source = adapter.source
    if isinstance(source, HuggingFaceSource):
        source, files, config = _from_hub(adapter.name, source)
        where = f"{source.repo}@{source.revision}"
    else:
        files, config = _from_directory(adapter.name, source)
        where = source.path
    settings = _parse_config(adapter.name, where, config)
    rank = _checked_rank(adapter, where, settings)
    _compare_base(adapter.name, settings, base_repo, log)
    return adapter.model_copy(update={"source": source, "files": files, "rank": rank})


def _from_hub(
    name: str, source: HuggingFaceSource
) -> tuple[HuggingFaceSource, list[ManifestFile], bytes]:
    from huggingface_hub import HfApi

    from zarf_vllm.packaging.weights.hub import fetch_bytes, hub_endpoint

    api = HfApi(endpoint=hub_endpoint())
    info = api.model_info(source.repo, revision=source.revision, files_metadata=True)
    if not info.sha or not re.fullmatch(r"[0-9a-f]{40}", info.sha):
        raise WeightsError(f"adapter {name!r}: {source.repo}: the Hub returned no commit")
    siblings = {s.rfilename: s for s in info.siblings or []}
    where = f"{source.repo}@{info.sha}"
    selected = _checked_selection(
        name, where, list(siblings), select_adapter_files(siblings, source.include)
    )
    files, config = [], b""
    for path in selected:
        lfs = siblings[path].lfs
        # The config is read for its rank even where it is an LFS file.
        if lfs is None or path == ADAPTER_CONFIG:
            data = fetch_bytes(source.repo, info.sha, path)
            files.append(ManifestFile.from_bytes(path, data))
            config = data if path == ADAPTER_CONFIG else config
        else:
            files.append(ManifestFile(path=path, size=lfs.size, sha256=lfs.sha256))
    return source.model_copy(update={"revision": info.sha}), files, config


def _from_directory(name: str, source: LocalSource) -> tuple[list[ManifestFile], bytes]:
    directory = Path(source.path)
    if not directory.is_dir():
        raise WeightsError(f"adapter {name!r}: {directory}: not a directory (its source.path)")
    available = relative_files(directory)
    selected = _checked_selection(name, str(directory), available, select_adapter_files(available))
    return hash_files(directory, selected), (directory / ADAPTER_CONFIG).read_bytes()


def _checked_selection(
    name: str, where: str, available: list[str], selected: list[str]
) -> list[str]:
    """`selected`, once it holds the config and safetensors weights and no pickle."""
    if ADAPTER_CONFIG not in selected:
        raise WeightsError(
            f"adapter {name!r}: {where} has no {ADAPTER_CONFIG} among {sorted(available)[:10]}"
        )
    pickles = [p for p in selected if p.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise WeightsError(
            f"adapter {name!r}: source.include selects pickled weights {pickles}: lock records "
            "adapter weights as safetensors only (loading a pickle can run code)"
        )
    if any(p.endswith(".safetensors") for p in selected):
        return selected
    shipped = [p for p in ADAPTER_PICKLES if p in available]
    if shipped:
        raise WeightsError(
            f"adapter {name!r}: {where} ships its weights only as PyTorch pickles "
            f"({', '.join(shipped)}), no {ADAPTER_WEIGHTS}; lock records adapter weights as "
            "safetensors only (loading a pickle can run code): convert it (peft's "
            "save_pretrained with safe_serialization=True) into a directory and give that as "
            "a local source, or pick a revision that has safetensors"
        )
    raise WeightsError(f"adapter {name!r}: {where} has no {ADAPTER_WEIGHTS}")


def _parse_config(name: str, where: str, data: bytes) -> dict[str, Any]:
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise WeightsError(
            f"adapter {name!r}: {where} {ADAPTER_CONFIG} is not JSON: {exc}"
        ) from exc
    if not isinstance(config, dict):
        raise WeightsError(f"adapter {name!r}: {where} {ADAPTER_CONFIG} is not a JSON object")
    return config


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _checked_rank(adapter: Adapter, where: str, config: dict[str, Any]) -> int:
    """The rank vLLM checks against max_lora_rank: the largest of `r` and the per-module
    `rank_pattern` (PEFTHelper.validate_legal, vllm/lora/peft_helper.py)."""
    r = config.get("r")
    pattern = config.get("rank_pattern") or {}
    if not _positive_int(r) or not isinstance(pattern, dict):
        raise WeightsError(
            f"adapter {adapter.name!r}: {where} {ADAPTER_CONFIG} has no positive LoRA rank `r` "
            f"(peft_type {config.get('peft_type')!r}): only LoRA adapters are served"
        )
    if not all(_positive_int(v) for v in pattern.values()):
        raise WeightsError(
            f"adapter {adapter.name!r}: {where} {ADAPTER_CONFIG} rank_pattern {pattern} holds "
            "a rank that is not a positive integer"
        )
    rank = max([r, *pattern.values()])
    read = f"{ADAPTER_CONFIG}'s r={r}" + (f" and rank_pattern {pattern}" if pattern else "")
    if rank > MAX_ADAPTER_RANK:
        raise WeightsError(
            f"adapter {adapter.name!r}: rank {rank} ({read}) is above {MAX_ADAPTER_RANK}, the "
            "largest vLLM serves"
        )
    if adapter.rank is not None and adapter.rank != rank:
        raise WeightsError(
            f"adapter {adapter.name!r}: the manifest's rank is {adapter.rank}, but {where} "
            f"has rank {rank} ({read}): correct `rank` (or set it to null: lock fills it in)"
        )
    return rank


def _compare_base(name: str, config: dict[str, Any], base_repo: str | None, log: Log) -> None:
    """Warns where the adapter names another base model than the manifest's Hub repository.
    Not refused: adapters are often trained on a copy of the same base under another name
    (a mirror, a local path), which the name alone cannot tell apart from another model."""
    base = config.get("base_model_name_or_path")
    if base_repo is None or not isinstance(base, str) or not base.strip():
        return
    if base.strip().rstrip("/").lower() == base_repo.lower():
        return
    log(
        f"warning: adapter {name!r}: its {ADAPTER_CONFIG} names base model {base!r}, the "
        f"manifest's model is {base_repo!r}; locked anyway: serve it only if {base!r} has the "
        f"same weights as {base_repo!r} (a copy of it under another name)"
    )
