"""The LoRA values an engine runs with: how many adapter slots (vLLM's max_loras) and at which
rank (max_lora_rank), decided once for the backend's engine arguments (`backend.engine`), its
start-up fit check (`backend.fit_check`) and the sizing of the chart (`sizing.ModelFacts`).

No vLLM import here: the packaging side sizes models without vLLM installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The ranks vLLM's LoRAConfig accepts for max_lora_rank (vllm/config/lora.py, MaxLoRARanks; a
# unit test compares them with the installed vLLM's).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds `rank`."""
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise ValueError(f"LoRA rank {rank} is above vLLM's largest, {VLLM_LORA_RANKS[-1]}")
    return fitting[0]


@dataclass(frozen=True)
class LoraSlots:
    """vLLM's max_loras and max_lora_rank (already one of VLLM_LORA_RANKS)."""

    max_loras: int
    max_lora_rank: int


def lora_slots(
    ranks: Sequence[int],
    *,
    enable: bool | None = None,
    max_loras: int | None = None,
    max_rank: int | None = None,
) -> LoraSlots | None:
    """The slots for adapters of `ranks`, unless LoRA is off: on where `enable` says, else
    when there are adapters; every adapter in one batch and their largest rank (rounded up to
    one vLLM accepts) unless `max_loras` / `max_rank` say otherwise."""
    enabled = enable if enable is not None else bool(ranks)
    if not enabled:
        return None
    rank = max_rank or max(ranks, default=1)
    return LoraSlots(max_loras or max(len(ranks), 1), lora_rank(rank))
