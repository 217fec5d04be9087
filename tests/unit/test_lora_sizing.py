"""The LoRA adapters in the sizing (zarf_vllm.model.sizing): vLLM's stacked LoRA buffers per GPU,
the adapters in host memory, and the refusals that name them."""

from __future__ import annotations

import dataclasses

import pytest

from support.paths import MANIFESTS
from zarf_vllm.backend.config import ConfigError, EngineSettings
from zarf_vllm.backend.fit_check import Machine, check_fit
from zarf_vllm.model import sizing
from zarf_vllm.model.lora import LoraSlots
from zarf_vllm.model.manifest import Adapter, LocalSource, ModelManifest, load_manifest
from zarf_vllm.model.sizing import GIB, Hardware, ModelFacts, Overrides, Refused, size

LLAMA_8B = load_manifest(MANIFESTS / "llama-3.1-8b-instruct.yaml")
MISTRAL_7B = load_manifest(MANIFESTS / "mistral-7b-instruct-v0.3.yaml")
DEMO = load_manifest(MANIFESTS / "smollm2-135m-instruct.yaml")


def with_adapters(manifest: ModelManifest, *ranks: int) -> ModelManifest:
    adapters = [
        Adapter(name=f"a{i}", source=LocalSource(kind="local", path="x"), files=[], rank=rank)
        for i, rank in enumerate(ranks)
    ]
    return ModelManifest.model_validate({**manifest.model_dump(), "adapters": adapters})


def gpu(memory_gib: int, count: int = 1) -> Hardware:
    return Hardware(
        name="gpu",
        gpu_count=count,
        gpu_memory_mib=memory_gib * 1024,
        host_cpu=8,
        host_memory_gib=None,
        host_max_cpu=None,
        util_permille=900,
        max_model_len=131072,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        enforce_eager=False,
        cpu_kvcache_gib=None,
    )


CPU = Hardware(
    name="cpu",
    gpu_count=0,
    gpu_memory_mib=0,
    host_cpu=4,
    host_memory_gib=None,
    host_max_cpu=16,
    util_permille=900,
    max_model_len=4096,
    max_num_seqs=16,
    max_num_batched_tokens=4096,
    enforce_eager=True,
    cpu_kvcache_gib=2,
)


def test_llama_8b_one_adapter_of_rank_16_by_hand() -> None:
    facts = ModelFacts.from_manifest(with_adapters(LLAMA_8B, 16))
    assert (facts.lora_slots, facts.lora_rank) == (1, 16)
    # Per layer, each module's A (rank x input) and B (output x rank): q, k, v, o, gate, up, down.
    per_layer = (
        (4096 + 4096)
        + (4096 + 1024)
        + (4096 + 1024)
        + (4096 + 4096)
        + 2 * (4096 + 14336)
        + (14336 + 4096)
    )
    # Llama's embedding and LM head get slots too: vocab x rank and hidden x rank each.
    embeddings = 2 * (128256 + 4096)
    by_hand = (32 * per_layer + embeddings) * 16 * 2  # rank 16, bfloat16
    costs = sizing.costs_for(facts, "cuda")
    assert costs.tensor_parallel[1].lora_bytes == by_hand  # 88 MiB
    assert costs.tensor_parallel[1].host_lora_bytes == by_hand  # the worker's adapter cache


def test_tensor_parallel_splits_only_the_sharded_half() -> None:
    facts = ModelFacts.from_manifest(with_adapters(LLAMA_8B, 16))
    costs = sizing.costs_for(facts, "cuda")
    # Sharded: the column-parallel Bs (q, k, v, gate, up) and the row-parallel As (o, down).
    sharded = 32 * (4096 + 1024 + 1024 + 4096 + 2 * 14336 + 14336) * 16 * 2
    whole = costs.tensor_parallel[1].lora_bytes
    for t in (2, 4, 8):
        assert costs.tensor_parallel[t].lora_bytes == whole - sharded + sharded // t
        # Every worker caches every adapter whole in host memory.
        assert costs.tensor_parallel[t].host_lora_bytes == t * whole


def test_slots_and_rank_follow_the_adapters_and_the_dtype() -> None:
    one = ModelFacts.from_manifest(with_adapters(LLAMA_8B, 16))
    # Three adapters of ranks 8, 12, 16: three slots at rank 16 (12 rounds up to vLLM's 16).
    three = ModelFacts.from_manifest(with_adapters(LLAMA_8B, 8, 12, 16))
    assert (three.lora_slots, three.lora_rank) == (3, 16)
    assert three.lora_bytes(1, 2) == 3 * one.lora_bytes(1, 2)
    wide = ModelFacts.from_manifest(with_adapters(LLAMA_8B, 33))  # rank 64
    assert wide.lora_bytes(1, 2) == 4 * one.lora_bytes(1, 2)
    none = ModelFacts.from_manifest(LLAMA_8B)
    assert none.lora_bytes(1, 2) == 0
    assert sizing.costs_for(none, "cuda").tensor_parallel[1].lora_bytes == 0
    # float32 on the CPU: 4 bytes a value, in host memory (buffers and cache), no GPU term.
    cpu = sizing.costs_for(one, "cpu").tensor_parallel[1]
    assert cpu.lora_bytes == 0
    assert cpu.host_lora_bytes == sizing.LORA_CPU_HOST_COPIES * one.lora_bytes(1, 4)


def test_models_whose_vllm_class_has_no_embedding_slots() -> None:
    mistral = ModelFacts.from_manifest(with_adapters(MISTRAL_7B, 16))
    assert not mistral.lora_embeddings
    assert ModelFacts.from_manifest(with_adapters(LLAMA_8B, 16)).lora_embeddings
    # Mistral-7B's shape is Llama-8B's but for the vocabulary: the linear layers alone.
    per_layer = 7 * 4096 + 2 * 4096 + 2 * 1024 + 3 * 14336
    assert mistral.lora_bytes(1, 2) == 32 * per_layer * 16 * 2


def test_adapters_take_kv_cache_and_context() -> None:
    hardware = gpu(24)
    plain = size(ModelFacts.from_manifest(LLAMA_8B), hardware)
    facts = ModelFacts.from_manifest(with_adapters(LLAMA_8B, 64, 64))
    lora = size(facts, hardware)
    assert lora.max_model_len < plain.max_model_len
    assert plain.kv_capacity_tokens is not None and lora.kv_capacity_tokens is not None
    lost = plain.kv_capacity_tokens - lora.kv_capacity_tokens
    # Exactly the LoRA buffers' bytes, in tokens (up to the integer division's rounding).
    assert abs(lost - facts.lora_bytes(1, 2) // plain.kv_bytes_per_token) <= 1


def test_an_adapter_set_that_does_not_fit_is_refused_with_its_numbers() -> None:
    facts = ModelFacts.from_manifest(with_adapters(LLAMA_8B, *[256] * 8))
    with pytest.raises(Refused) as refused:
        size(facts, gpu(24))
    message = str(refused.value)
    lora = sizing.gib(facts.lora_bytes(1, 2))
    assert f"14.9 GiB of weights + {lora} GiB of LoRA adapter slots (max_loras 8 x " in message
    assert "max_lora_rank 256) + " in message
    # Without the adapters the same profile refuses nothing; a refusal without them names none.
    size(ModelFacts.from_manifest(LLAMA_8B), gpu(24))
    with pytest.raises(Refused) as plain:
        size(ModelFacts.from_manifest(LLAMA_8B), gpu(12))
    assert "LoRA" not in str(plain.value)


def test_a_short_kv_cache_refusal_lists_the_adapters() -> None:
    facts = ModelFacts.from_manifest(with_adapters(LLAMA_8B, 128, 128))
    with pytest.raises(Refused) as refused:
        size(facts, gpu(24), Overrides(max_model_len=131072))
    message = str(refused.value)
    lora = sizing.gib(facts.lora_bytes(1, 2))
    assert f"after 14.9 GiB of weights, {lora} GiB of LoRA adapter slots (max_loras 2 x " in message


def test_host_memory_counts_the_adapters() -> None:
    plain = size(ModelFacts.from_manifest(DEMO), CPU)
    facts = ModelFacts.from_manifest(with_adapters(DEMO, 512, 512))
    lora = size(facts, CPU)
    host = sizing.LORA_CPU_HOST_COPIES * facts.lora_bytes(1, 4)
    assert host > GIB
    assert lora.host_memory_gib - plain.host_memory_gib in (host // GIB, host // GIB + 1)
    with pytest.raises(Refused) as refused:
        size(facts, CPU, Overrides(host_memory_gib=plain.host_memory_gib))
    assert f" + {sizing.gib(host)} GiB LoRA adapters + 2 GiB KV cache" in str(refused.value)
    # On GPUs each engine's workers cache the adapters: data parallel counts every engine.
    gpu_facts = ModelFacts.from_manifest(with_adapters(LLAMA_8B, 512))
    one, two = size(gpu_facts, gpu(80)), size(gpu_facts, gpu(80, count=2))
    assert two.data_parallel_size == 2
    plain_one = size(ModelFacts.from_manifest(LLAMA_8B), gpu(80))
    plain_two = size(ModelFacts.from_manifest(LLAMA_8B), gpu(80, count=2))
    cache = gpu_facts.lora_bytes(1, 2)
    assert one.host_memory_gib - plain_one.host_memory_gib in (cache // GIB, cache // GIB + 1)
    grown = two.host_memory_gib - plain_two.host_memory_gib
    assert grown in (2 * cache // GIB, 2 * cache // GIB + 1)


def test_the_start_up_check_sizes_the_settings_lora_values() -> None:
    manifest = with_adapters(LLAMA_8B, 64, 64, 64)
    machine = Machine(gpu_count=1, gpu_memory_mib=24 * 1024, memory_limit_bytes=None)
    settings = EngineSettings(max_model_len=8192)
    default = check_fit(settings, manifest, machine)
    one = check_fit(settings.model_copy(update={"max_loras": 1}), manifest, machine)
    off = check_fit(settings.model_copy(update={"enable_lora": False}), manifest, machine)
    plain = check_fit(settings, LLAMA_8B, machine)
    assert default and one and off and plain
    tokens = [f.kv_capacity_tokens or 0 for f in (default, one, off)]
    assert tokens[0] < tokens[1] < tokens[2] == plain.kv_capacity_tokens
    # 300 is no rank vLLM takes: it runs (and the check sizes) 320.
    expected = r"LoRA adapter slots \(max_loras 3 x max_lora_rank 320\)"
    with pytest.raises(ConfigError, match=expected):
        check_fit(settings.model_copy(update={"max_lora_rank": 300}), manifest, machine)


def test_with_lora_replaces_the_manifests_slots() -> None:
    facts = ModelFacts.from_manifest(with_adapters(LLAMA_8B, 16))
    assert facts.with_lora(None).lora_bytes(1, 2) == 0
    assert facts.with_lora(LoraSlots(2, 16)).lora_bytes(1, 2) == 2 * facts.lora_bytes(1, 2)
    assert dataclasses.replace(facts, lora_embeddings=False).lora_bytes(1, 2) < (
        facts.lora_bytes(1, 2)
    )
