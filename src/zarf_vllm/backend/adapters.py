"""The LoRA adapters this backend serves on its one engine, and where each is reached.

The manifest lists the adapters; the weights directory holds each under adapters/<name>/
(`manifest.adapter_dir`). On the OpenAI API an adapter is a model name; the LeapfrogAI
contract's requests carry no model name, so each adapter gets its own gRPC port, the model's
port + 1 + its index in the manifest (docs/lora.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zarf_vllm.backend.config import ConfigError, Settings
from zarf_vllm.model.manifest import ModelManifest, adapter_dir


@dataclass(frozen=True)
class ServedAdapter:
    name: str
    path: Path  # its directory, as vLLM loads it
    rank: int
    lora_id: int  # vLLM's LoRARequest id: 1 + its index, the order vLLM's OpenAI layer counts


def served_adapters(
    settings: Settings, manifest: ModelManifest | None
) -> tuple[ServedAdapter, ...]:
    """The manifest's adapters, unless engine.enable_lora is off. Refuses settings that cannot
    serve them (a max_lora_rank below an adapter's rank), naming the adapter."""
    engine = settings.engine
    if manifest is None or not manifest.adapters or engine.enable_lora is False:
        return ()
    assert settings.model.path is not None
    ranks = _ranks(manifest)
    too_large = [name for name, rank in ranks.items() if rank > (engine.max_lora_rank or rank)]
    if too_large:
        raise ConfigError(
            f"engine.max_lora_rank={engine.max_lora_rank} is below the rank of adapter(s) "
            f"{too_large}: raise it to {manifest.max_adapter_rank} or leave it unset"
        )
    served = tuple(
        ServedAdapter(a.name, settings.model.path / adapter_dir(a.name), ranks[a.name], index + 1)
        for index, a in enumerate(manifest.adapters)
    )
    for adapter in served:
        if not (adapter.path / "adapter_config.json").is_file():
            raise ConfigError(
                f"adapter {adapter.name!r}: {adapter.path} has no adapter_config.json; the "
                "model image carries it (re-run the pull), or set engine.enable_lora=false"
            )
    return served


def _ranks(manifest: ModelManifest) -> dict[str, int]:
    """Each adapter's rank; an adapter without one is unlocked, so its files were never
    pulled into the image either."""
    unranked = [a.name for a in manifest.adapters if a.rank is None]
    if unranked:
        raise ConfigError(
            f"adapter(s) {unranked} have no rank: the manifest is unlocked; lock it on a "
            "connected machine (`lock`) and rebuild the model image"
        )
    return {a.name: a.rank for a in manifest.adapters if a.rank is not None}


def adapter_port(model_port: int, index: int) -> int:
    """The gRPC port of the adapter at `index`; 0 (any free port) when the model's is 0."""
    return 0 if model_port == 0 else model_port + 1 + index
