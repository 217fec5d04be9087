"""The backend's start-up check: its final engine settings against the machine, with the
chart's sizing (zarf_vllm.backend.fit_check)."""

from __future__ import annotations

import pytest

from support.paths import DEMO_MANIFEST, EMBEDDING_MANIFEST
from zarf_vllm.backend.config import ConfigError, EngineSettings
from zarf_vllm.backend.fit_check import (
    Machine,
    check_fit,
    check_this_machine,
    detect_machine,
    memory_limit_bytes,
)
from zarf_vllm.model import sizing
from zarf_vllm.model.manifest import load_manifest

DEMO = load_manifest(DEMO_MANIFEST)
MINILM = load_manifest(EMBEDDING_MANIFEST)
CPU = Machine(gpu_count=0, gpu_memory_mib=0, memory_limit_bytes=8 * sizing.GIB)
CPU_FIT_GIB = 7  # what the demo model needs on the cpu profile (docs/profiles.md)
CPU_PROFILE = EngineSettings(
    dtype="float32",
    max_model_len=4096,
    max_num_seqs=16,
    max_num_batched_tokens=4096,
    enforce_eager=True,
    cpu_kvcache_space_gib=2,
)


def test_the_cpu_profiles_settings_fit_and_the_numbers_are_the_charts() -> None:
    fit = check_fit(CPU_PROFILE, DEMO, CPU)
    assert fit is not None
    # 30 layers x 3 KV heads x 64 x 2 (K, V) x 4 bytes (float32) = 46,080 bytes per token.
    assert fit.kv_bytes_per_token == 46_080
    assert fit.kv_capacity_tokens == 2 * sizing.GIB // 46_080
    assert fit.max_model_len == 4096


def test_a_context_the_kv_cache_cannot_hold_is_refused_in_numbers() -> None:
    unsized = CPU_PROFILE.model_copy(update={"cpu_kvcache_space_gib": None})
    assert check_fit(unsized, DEMO, CPU) is None  # vLLM-CPU sizes its own cache then
    tight = CPU_PROFILE.model_copy(update={"max_model_len": 8192})
    small = Machine(0, 0, None)
    fit = check_fit(tight, DEMO, small)
    assert fit is not None and fit.max_model_len == 8192
    with pytest.raises(ConfigError) as refused:
        check_fit(tight.model_copy(update={"max_model_len": 100_000}), DEMO, small)
    assert "MAX_MODEL_LEN=100000 exceeds the 8192 tokens" in str(refused.value)


def test_a_memory_limit_below_what_loading_needs_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        check_fit(CPU_PROFILE, DEMO, Machine(0, 0, 2 * sizing.GIB))
    message = str(refused.value)
    assert "do not fit this machine (CPU, memory limit 2.0 GiB)" in message
    assert "HOST_MEMORY_GIB=2 is less than the" in message and "GiB KV cache" in message


def test_several_front_ends_need_their_memory_under_the_limit() -> None:
    # The demo needs 7 GiB with one process: the 8 GiB limit holds that, not four front ends
    # (1 GiB each) beside the engine; 11 GiB holds them.
    assert check_fit(CPU_PROFILE, DEMO, CPU, api_processes=1) is not None
    with pytest.raises(ConfigError, match=r"less than the 11 GiB .*\+ 4\.0 GiB for 4 front-end"):
        check_fit(CPU_PROFILE, DEMO, CPU, api_processes=4)
    roomy = Machine(
        gpu_count=0, gpu_memory_mib=0, memory_limit_bytes=(CPU_FIT_GIB + 4) * sizing.GIB
    )
    assert check_fit(CPU_PROFILE, DEMO, roomy, api_processes=4) is not None


def test_the_embedding_models_rendered_length_is_what_vllm_derives() -> None:
    fit = check_fit(EngineSettings(max_model_len=256, cpu_kvcache_space_gib=1), MINILM, CPU)
    assert fit is not None and fit.kv_capacity_tokens is None
    with pytest.raises(ConfigError, match="MAX_MODEL_LEN=512 exceeds the 256 tokens"):
        check_fit(EngineSettings(max_model_len=512, cpu_kvcache_space_gib=1), MINILM, CPU)


def test_gpu_settings_need_the_gpus_they_name() -> None:
    needs = r"tensor_parallel_size=2 x engine\.data_parallel_size=1 needs 2 GPUs; this machine"
    with pytest.raises(ConfigError, match=needs):
        check_fit(EngineSettings(tensor_parallel_size=2), DEMO, Machine(1, 23028, None))
    fit = check_fit(EngineSettings(max_model_len=8192), DEMO, Machine(1, 23028, None))
    assert fit is not None and fit.gpus == 1


def test_data_parallel_engines_each_take_their_gpus() -> None:
    two = EngineSettings(max_model_len=8192, data_parallel_size=2)
    needs = r"tensor_parallel_size=1 x engine\.data_parallel_size=2 needs 2 GPUs; this machine"
    with pytest.raises(ConfigError, match=needs):
        check_fit(two, DEMO, Machine(1, 23028, None))
    fit = check_fit(two, DEMO, Machine(2, 23028, None))
    assert fit is not None and (fit.gpus, fit.data_parallel_size) == (2, 2)
    # On the CPU each engine holds its own KV cache, so a limit for one does not hold two.
    one_limit = Machine(0, 0, CPU_FIT_GIB * sizing.GIB)
    assert check_fit(CPU_PROFILE, DEMO, one_limit) is not None
    with pytest.raises(ConfigError, match="HOST_MEMORY_GIB=7 is less than the"):
        check_fit(CPU_PROFILE.model_copy(update={"data_parallel_size": 2}), DEMO, one_limit)


def test_the_memory_limit_is_read_or_none() -> None:
    limit = memory_limit_bytes()
    assert limit is None or limit > 0


def test_the_cuda_build_without_a_gpu_stops_with_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # vLLM's CUDA build where NVML finds no GPU resolves to its UnspecifiedPlatform; the check
    # must refuse it with or without a manifest, before the engine fails with a traceback.
    import vllm.platforms
    from vllm.platforms.interface import UnspecifiedPlatform

    monkeypatch.setattr(vllm.platforms, "_current_platform", UnspecifiedPlatform())
    with pytest.raises(ConfigError) as refused:
        detect_machine()
    message = str(refused.value)
    assert message.startswith("no GPU found: this is the CUDA build of vLLM and NVML")
    assert "NVIDIA container runtime" in message and "\n" not in message
    with pytest.raises(ConfigError, match="no GPU found"):
        check_this_machine(CPU_PROFILE, None)


def test_a_stage_of_a_model_split_across_nodes_is_sized_as_its_share() -> None:
    """Llama-3.1-405B on the leader of two 8 x H100 nodes: each GPU holds 1/16 of it."""
    from support.paths import MANIFESTS

    manifest = load_manifest(MANIFESTS / "llama-3.1-405b-instruct.yaml")
    node = Machine(gpu_count=8, gpu_memory_mib=81559, memory_limit_bytes=None)
    whole = EngineSettings(tensor_parallel_size=8, gpu_memory_utilization=0.92)
    with pytest.raises(ConfigError, match=r"each GPU needs 94\.4 GiB of weights"):
        check_fit(whole, manifest, node)
    split = whole.model_copy(update={"pipeline_parallel_size": 2, "nnodes": 2})
    fit = check_fit(split, manifest, node)
    assert fit is not None and fit.tensor_parallel_size == 8 and fit.pipeline_parallel_size == 2


def test_fp8_settings_are_checked_against_the_gpus_compute_capability() -> None:
    fp8 = EngineSettings(max_model_len=8192, quantization="fp8", kv_cache_dtype="fp8")
    ada = Machine(1, 23028, None, "8.9")
    fit = check_fit(fp8, DEMO, ada)
    assert fit is not None and fit.quantization == "fp8" and fit.kv_cache_dtype == "fp8"
    # vLLM's own spelling of the same method sizes the same.
    assert check_fit(fp8.model_copy(update={"quantization": "fp8_per_tensor"}), DEMO, ada) == fit
    ampere = Machine(1, 40960, None, "8.0")
    with pytest.raises(ConfigError) as refused:
        check_fit(fp8, DEMO, ampere)
    message = str(refused.value)
    assert "(1 x 40960 MiB GPU(s), compute capability 8.0, no memory limit)" in message
    assert "KV_CACHE_DTYPE=fp8 needs GPUs with FP8" in message
    with pytest.raises(ConfigError, match="QUANTIZATION=fp8 needs GPUs with FP8"):
        check_fit(fp8.model_copy(update={"kv_cache_dtype": "auto"}), DEMO, ampere)
    with pytest.raises(ConfigError, match="QUANTIZATION=awq does not match the weights"):
        check_fit(EngineSettings(max_model_len=8192, quantization="awq"), DEMO, ada)
