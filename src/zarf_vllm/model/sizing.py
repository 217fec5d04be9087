"""Sizing: whether a model fits the hardware, and the engine values that make it fit.

The formulas live here and nowhere else. They are used three times:
- at `zarf package create`, `scripts/render-values` writes each profile's decided `Fit`
  into the chart values, and the chart looks it up;
- for deploy-time overrides, which cannot be decided ahead, the same step writes the model's
  `Costs` (every byte count below, already worked out per tensor-parallel size and KV-cache
  dtype) and the refusal texts (`MESSAGES`); the chart's small override check
  (`chart/templates/_fit.tpl`) only adds up those numbers in the order `fit()` does;
- at start-up the backend checks its final settings against the machine it runs on
  (`zarf_vllm.backend.fit_check`).

Everything is integer arithmetic on bytes and tokens, so Helm's int64 arithmetic gives the same
numbers; tests/chart/test_chart.py checks that the chart and Python agree on every manifest x
profile and on random overrides, to the word of the refusal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from zarf_vllm.model import lora
from zarf_vllm.model.manifest import ModelManifest

GIB = 1 << 30
MIB = 1 << 20

# vLLM allocates the KV cache in blocks of 16 tokens on GPUs (CacheConfig's default
# block_size); a max_model_len on a block boundary wastes no partial block.
BLOCK_SIZE = 16
# vLLM-CPU uses 128-token blocks (vllm/platforms/cpu.py sets block_size 128 unless told
# otherwise: with the cpu profile's 2 GiB it logged 93,184 tokens where the bytes give 93,206),
# and its KV cache is exactly CPU_KVCACHE_GIB, so what a context may take is exact: the whole
# blocks less the null block vLLM holds back. Measured on vLLM-CPU 0.32 with a 1 GiB cache of
# 1,048,576 tokens: max_model_len 1,048,576 was refused ("the estimated maximum model length is
# 1048448"), 1,048,448 started.
CPU_BLOCK_SIZE = 128

# The shortest context worth serving: a chat turn with some history. A model trained on fewer
# positions is held to what it was trained for.
USABLE_CONTEXT = 4096

# A KV cache is "useful" when it holds this many sequences at the context the profile's class
# aims for (its max_model_len, or the model's if shorter, or MAX_MODEL_LEN). Below that, a
# larger tensor-parallel size, when the node's GPUs allow one, buys context and concurrency;
# above it, a larger size would only take GPUs that other workloads could use.
USEFUL_KV_SEQUENCES = 2

# vLLM's memory profiling runs one forward pass of max_num_batched_tokens tokens. Per token
# and hidden unit it holds the residual stream, the normed input, q/k/v and the attention
# output, and the SwiGLU gate/up/down intermediates (3.5-5.4 x hidden in the manifests'
# families): about 16 live 16-bit values, 32 bytes. For Llama-3.1-8B at 8192 tokens that is
# 1.0 GiB, the order of the "activation peak" vLLM logs for that model.
ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN = 32

# The sampler is profiled with max_num_seqs dummy requests: float32 logits over the vocabulary
# plus a float32 copy for the probabilities, 8 bytes per sequence and vocabulary entry.
SAMPLER_BYTES_PER_SEQ_PER_VOCAB = 8

# What vLLM may use of each GPU is gpu_memory_utilization x the total CUDA reports
# (vllm/v1/worker/utils.py request_memory: init_snapshot.total_memory x utilization), and CUDA's
# total is up to CUDA_TOTAL_SHORTFALL_BYTES below nvidia-smi's (the profiles' figures; see
# below). From that budget vLLM's determine_available_memory (vllm/v1/worker/gpu_worker.py)
# takes, before the KV cache: the weights, the activation peak of its profiling pass (the two
# constants above), and the two per-GPU terms below; the rest is the KV cache.
#
# Non-torch memory: memory_profiling's non_torch_increase (vllm/utils/mem_utils.py), what the
# process holds outside PyTorch's allocator after the start-up snapshot: cuBLAS/cuDNN
# workspaces (0.16-0.33 GiB in published single-GPU logs); with tensor parallelism also NCCL's
# communicator buffers and the custom all-reduce's IPC buffers
# (vllm/distributed/device_communicators/custom_all_reduce.py, 8 MiB each), 0.95-1.63 GiB per
# GPU in published logs at TP 2 and 4.
NON_TORCH_BYTES = GIB // 2
TP_NON_TORCH_BYTES = 7 * GIB // 4
# CUDA graphs: profile_cudagraph_memory's estimate (vllm/v1/worker/gpu_model_runner.py), which
# determine_available_memory subtracts since VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS became the
# default (v0.21). Published logs: 0.13-0.36 GiB for small models on one GPU, 1.0-2.4 GiB per
# GPU for 70B-class models at TP 2 and 4 (the estimate extrapolates the first graphs linearly,
# so it grows with the capture sizes and the layers). Every GPU profile captures graphs
# (enforce_eager false).
CUDA_GRAPH_BYTES = GIB
TP_CUDA_GRAPH_BYTES = 5 * GIB // 2

# vLLM starts only when the KV cache holds one request of max_model_len
# (vllm/v1/core/kv_cache_utils.py check_enough_kv_cache_memory, less the null block its
# BlockPool holds back). The terms before the KV cache are estimates of what vLLM measures at
# start, so a context limited by the KV cache uses at most this share of the estimated
# capacity; the rest is the margin by which the estimates may fall short, and it covers the null
# block. (A judgment, not a measurement: where the KV cache limits the context it is a few GiB,
# and the estimates before it may be off by a few tenths of a GiB.)
KV_USABLE_PERCENT = 90

# vLLM refuses to start when gpu_memory_utilization x the GPU's total (as CUDA reports it) is
# more than the memory free at start. CUDA's total is 0.4-0.85 GiB below nvidia-smi's (the
# profiles' figures); free memory at start is below CUDA's total by the process's CUDA context
# and whatever else holds the GPU: 0.23 GiB on an L4 that refused 0.99 (21.83 of 22.06 GiB
# free), and more than 0.39 GiB on an A100-40GB that refused 0.99 too. 0.5 GiB, the usual
# context, covers both; a GPU of M GiB then starts with at most 1 - 0.5 / (M - 0.85).
CUDA_TOTAL_SHORTFALL_BYTES = 85 * GIB // 100
FREE_AT_START_SHORTFALL_BYTES = GIB // 2

# Host memory: the API process and the engine core (Python, torch, tokenizer) take about
# 3 GiB; each GPU worker process adds CUDA's host-side state and pinned buffers, about 2 GiB.
# The safetensors are mmapped, and cgroup v2 charges that page cache to the pod, so the
# weights count once in full.
HOST_RUNTIME_BYTES = 3 * GIB
HOST_BYTES_PER_GPU_WORKER = 2 * GIB
# Data parallel: each engine past the first is one more engine-core process (Python, torch, the
# scheduler, its queues), on the CPU with its worker process too, and the DP coordinator joins
# once. Measured on vLLM-CPU 0.32 (the 3 MB test Llama, float32, 1 GiB KV cache per engine), the
# proportional set size (PSS, shared pages split) of the process tree: 2,338 MiB at DP 1 and
# 4,621 MiB at DP 2; the second engine added its engine core (414 MiB), its worker (1,483 MiB,
# 1 GiB of it the KV cache) and the coordinator (408 MiB): 1.23 GiB besides the KV cache; with
# the demo model (bench/data_parallel.py) 1.5 GiB besides its own weights and KV cache. 2 GiB
# leaves room for a GPU engine core's larger torch/CUDA libraries.
HOST_BYTES_PER_ENGINE = 2 * GIB
# API_PROCESSES > 1 (backend/frontends.py): a supervisor that imports vLLM to launch the engine
# core, and N front-end processes, each with its own Python, gRPC, tokenizer and vLLM client,
# in place of the one process HOST_RUNTIME_BYTES counts. Measured on vLLM-CPU 0.32 (the tiny test
# Llama, bench/serving.py procs2): one process 615 MB resident, the supervisor and two front ends
# 1,770 MB, so about 0.6 GB per process; 1 GiB each leaves room for a large tokenizer and
# vLLM's OpenAI serving layer. N front ends plus the supervisor less the one process: N of them.
HOST_BYTES_PER_FRONT_END = GIB

# /dev/shm for tensor parallel > 1: NCCL's shared-memory transport and vLLM's shared-memory
# broadcast queue between workers. Docker's 64 MiB default makes NCCL fail; 1 GiB per rank
# leaves room for NCCL's per-peer, per-channel buffers. It is memory-backed, so it also
# counts toward the pod's memory.
SHM_BYTES_PER_RANK = GIB

# /dev/shm on the CPU, at any tensor-parallel size: vLLM-CPU always runs its multiprocess
# executor (even with one rank), whose shared-memory message queue needs 160 MiB, and the
# engine stops ("Insufficient space in /dev/shm") in the container runtime's 64 MiB default.
CPU_SHM_GIB = 1

# The startup probe's budget: imports, engine start, torch.compile and CUDA-graph capture,
# warm-up (about 10 minutes on a slow node, all in the fixed part), plus reading the weights
# from the node's disk at a conservative 200 MB/s (slow overlay storage; NVMe is 10x faster).
STARTUP_BASE_SECONDS = 600
LOAD_BYTES_PER_SECOND = 200 * 10**6
PROBE_PERIOD_SECONDS = 10

# The pod's grace period is the backend's drain timeout plus this margin for the engine's
# shutdown after the last call ends.
DRAIN_MARGIN_SECONDS = 15

# LoRA adapters (docs/lora.md). With LoRA on, vLLM wraps every LoRA-capable module as it loads
# the model (vllm/lora/model_manager.py, _create_lora_modules) and preallocates for each stacked
# A and B buffers of max_loras slots at max_lora_rank, in the model's dtype (LoRAConfig's
# lora_dtype "auto"), however many adapters are loaded. They are allocated with the weights,
# before vLLM's memory profiling, so they come out of the KV cache. Per decoder layer and slot,
# with R = max_lora_rank and t the tensor-parallel size (vLLM's default: fully_sharded_loras off,
# so only the B of a column-parallel layer and the A of a row-parallel one are sharded):
# - qkv_proj (MergedQKVParallelLinearWithLoRA, vllm/lora/layers/column_parallel_linear.py, its
#   parent MergedColumnParallelLinearWithLoRA.create_lora_weights): an A of R x hidden for each
#   of q, k and v, and Bs of (heads x head_dim / t) x R and twice (kv_heads x head_dim / t) x R;
# - gate_up_proj (MergedColumnParallelLinearWithLoRA.create_lora_weights): an A of R x hidden
#   and a B of (intermediate / t) x R for each of gate and up;
# - o_proj and down_proj (RowParallelLinearWithLoRA, row_parallel_linear.py, sized by
#   BaseLinearLayerWithLoRA.create_lora_weights in base_linear.py): an A of R x (input / t)
#   and a B of hidden x R.
# Together R x (7 hidden + (2 q + 2 kv + 3 intermediate) / t) values, q = heads x head_dim and
# kv = kv_heads x head_dim. Where the model's vLLM class lists embedding_modules (Llama's:
# embed_tokens and lm_head; vllm/lora/utils.py get_supported_lora_modules), the token embedding
# (VocabParallelEmbeddingWithLoRA.create_lora_weights, vocab_parallel_embedding.py: A vocab x
# R, B hidden x R) and the LM head (LogitsProcessorWithLoRA.create_lora_weights,
# logits_processor.py: A R x hidden, B vocab x R) get slots too, unsharded: R x 2 x (vocab +
# hidden). vLLM 0.32 has no extra-vocabulary slots. Not counted, as too small to matter: the
# punica wrapper's index buffers and the kernels' float32 intermediates (tokens x R x 3 at most),
# and the rank-8 dummy adapters vLLM warms up with, in host memory during start-up only.
#
# The vLLM classes of these model types list no embedding_modules, so their embeddings get no
# slots (vllm/model_executor/models/mistral.py MistralForCausalLM: "We don't support LoRA on
# the embedding layers"; qwen2.py, gemma.py, gemma2.py, gemma3.py define none). Any other model
# type is sized with them, the larger figure.
LORA_NO_EMBEDDING_MODEL_TYPES = ("mistral", "qwen2", "gemma", "gemma2", "gemma3_text")
# Host memory: each worker process keeps the adapters it has loaded in a CPU cache of
# max_cpu_loras (vllm/lora/worker_manager.py, LRUCacheWorkerLoRAManager; its _load_adapter
# reads each whole, unsharded, with LoRAModel.from_local_checkpoint onto "cpu", pinned where a
# GPU is), which LoRAConfig sets to max_loras (the backend leaves it unset), and vLLM's OpenAI
# layer loads every adapter at start. An adapter (rank <= max_lora_rank, modules among those
# with slots) is at most one slot at tensor parallel 1, so each worker holds up to the TP-1
# slots' bytes again in host memory; on the CPU, where vLLM-CPU's "device" is host memory, the
# stacked buffers count there too.
LORA_CPU_HOST_COPIES = 2

# vLLM-CPU's linear kernels: unquantized, AWQ/GPTQ 4-bit through its WNA16 CPU kernel
# (vllm/model_executor/layers/quantization/auto_awq.py), and compressed-tensors INT8 W8A8
# (CompressedTensorsW8A8Int8 on CPUInt8ScaledMMLinearKernel, vllm/model_executor/kernels/linear/
# scaled_mm/cpu.py: oneDNN, or sgl-kernel's AMX GEMM where the CPU has AMX), which the quantized
# demo model (smollm2-135m-instruct-w8a8) runs in the suite. FP8 needs AMX in vLLM-CPU, which
# many CPUs lack, and bitsandbytes has no CPU kernel there: neither is accepted on the CPU.
CPU_QUANTIZATIONS = ("none", "awq", "gptq", "compressed-tensors")

# QUANTIZATION (cuda flavor): empty runs the checkpoint as it was saved; `fp8` quantizes a
# 16-bit checkpoint's linear layers as vLLM loads it (its online FP8, `--quantization
# fp8_per_tensor` in vLLM 0.32: vllm/config/quantization.py _ONLINE_SHORTHANDS; the engine maps
# the name, zarf_vllm.backend.engine); the others name a pre-quantized checkpoint's own method
# and must be the manifest's.
QUANTIZATIONS = ("fp8", "awq", "gptq", "compressed-tensors")
# vLLM's online FP8 loads bfloat16 or float16 checkpoints (vllm/model_executor/layers/
# quantization/online/fp8.py OnlineLinearBase; OnlineQuantizationConfig.get_supported_act_dtypes).
FP8_SOURCE_DTYPES = ("bfloat16", "float16")
# FP8 weights and the FP8 KV cache need compute capability 8.9 (Ada: L4, L40S) or newer (Hopper
# 9.0: H100, H200): vllm/platforms/cuda.py CudaPlatform.supports_fp8, has_device_capability(89).
# (On Ampere, 8.0/8.6, vLLM would fall back to weight-only FP8 through its Marlin kernel, with no
# FP8 tensor cores; the package refuses FP8 there rather than run it without the hardware.)
FP8_MIN_CAPABILITY = 89


# The GPU_COUNT variable's upper bound: costs are written for every tensor-parallel size up to it.
MAX_GPUS = 64
# The most nodes a profile's group may span (pipeline stages across nodes): vLLM's pipeline
# parallelism adds a stage's latency per node, and LeaderWorkerSet groups past a few nodes
# are for training, not serving.
MAX_NODES = 8

# Where a profile does not say what its nodes have (custom, or the start-up check's machine), the
# overrides are still bounded by what any GPU or node has. The largest GPU made: NVIDIA's B300,
# 288 GB of HBM3e (268 GiB; the bound leaves room for GB read as GiB). The largest x86 node: two
# 192-core sockets with SMT, 768 logical CPUs; two sockets of 12 channels x 256 GB DIMMs, 6 TB.
MAX_GPU_MEMORY_GIB = 288
MAX_HOST_CPU = 768
MAX_HOST_MEMORY_GIB = 6144


@dataclass(frozen=True)
class Bound:
    """An override's upper bound: the profile's hardware (Hardware.bound), else `most`."""

    field: str  # the Overrides field
    variable: str
    unit: str
    most: int
    most_what: str  # what `most` is
    why: str  # what would happen above it


BOUNDS = (
    Bound(
        field="gpu_count",
        variable="GPU_COUNT",
        unit="GPU(s) per node",
        most=MAX_GPUS,
        most_what="the sizing covers",
        why="the pod would ask for GPUs no node has and stay Pending",
    ),
    Bound(
        field="gpu_memory_gib",
        variable="GPU_MEMORY_GIB",
        unit="GiB per GPU",
        most=MAX_GPU_MEMORY_GIB,
        most_what="any GPU has (NVIDIA's B300: 288 GB)",
        why="the sizing would count GPU memory that is not there and vLLM would run out of it",
    ),
    Bound(
        field="host_cpu",
        variable="HOST_CPU",
        unit="cores per pod",
        most=MAX_HOST_CPU,
        most_what="one node has (two 192-core sockets with SMT)",
        why="the pod would stay Pending",
    ),
    Bound(
        field="host_memory_gib",
        variable="HOST_MEMORY_GIB",
        unit="GiB of memory per pod",
        most=MAX_HOST_MEMORY_GIB,
        most_what="one node has (6 TB)",
        why="the pod would stay Pending",
    ),
)

# Refusal texts, printf-style (%s, %d only). Python formats them here; the rendered values carry
# the same strings to the chart's override check, which formats them with the same numbers.
MESSAGES = {
    "flavor": "profile %s needs the %s flavor of this package, which was created with --flavor %s",
    "gpuOnly": "%s does not apply to the cpu profile, which runs without GPUs",
    "cpuOnly": "CPU_KVCACHE_GIB applies only to the cpu profile; profile %s keeps its KV cache "
    "in GPU memory",
    "cpuDtypeOnly": "CPU_DTYPE applies only to the cpu profile; profile %s computes in the "
    "checkpoint's 16-bit dtype",
    "cpuQuantization": "%s is %s-quantized, which vLLM-CPU does not run",
    "cpuDtypeQuantized": "CPU_DTYPE applies only to unquantized models, and %s is "
    "%s-quantized: its kernels compute in the checkpoint's dtype (on AMX CPUs vLLM-CPU's INT8 "
    "kernel takes no float32); leave CPU_DTYPE empty",
    "customNeedsGpus": "profile %s needs GPU_COUNT and GPU_MEMORY_GIB: the GPUs one node gives "
    "the model and the memory of each in GiB (e.g. GPU_COUNT=2, GPU_MEMORY_GIB=48)",
    "apiProcessesNodes": "API_PROCESSES=%d needs a model served on one node, but profile %s "
    "spans %d nodes: set API_PROCESSES to 1 (the backend refuses server.api_processes > 1 with "
    "engine.nnodes > 1)",
    "multiNodeEmbed": "%s is an embedding model, which vLLM does not run with pipeline "
    "parallelism, and profile %s spans %d nodes (a stage per node): use a single-node profile",
    "tooLong": "MAX_MODEL_LEN=%d exceeds the %d tokens %s accepts (max_position_embeddings, or "
    "the shorter input limit of its model directory)",
    "tooShort": "MAX_MODEL_LEN=%d is less than the %d tokens of a usable context for %s (a chat "
    "turn with some history, or the model's own limit where shorter): leave it empty or set at "
    "least %d",
    "overProfile": "%s=%d exceeds the %d %s of profile %s: %s",
    "overAny": "%s=%d exceeds %d %s, the most %s: %s",
    "embedBatch": "%s is an embedding model, which vLLM runs without chunked prefill: "
    "max_num_batched_tokens (%d) must be at least max_model_len (%d)",
    "batchSeqs": "max_num_batched_tokens (%d) must be at least max_num_seqs (%d): vLLM refuses "
    "fewer (set MAX_NUM_BATCHED_TOKENS or MAX_NUM_SEQS)",
    "utilTooHigh": "GPU_MEMORY_UTILIZATION=%s asks vLLM for %s GiB of each %s GiB GPU (that share "
    "of the total CUDA reports, up to 0.85 GiB less), but the CUDA context takes about 0.5 GiB, "
    "so vLLM may find only %s GiB free at start and refuse to start: use at most %s",
    "badTensorParallel": "TENSOR_PARALLEL_SIZE=%d does not suit %s on %d GPU(s): it must divide "
    "the attention heads (%d), the KV heads (%d) and the GPU count (%d); valid sizes: %s",
    "gpuBudget": "%s does not fit profile %s: at tensor parallel %d on %d x %s GiB GPU(s), "
    "gpu_memory_utilization %s of CUDA's total allows %s GiB per GPU",
    "gpuNoRoom": "%s, and each GPU needs %s GiB of weights%s + %s GiB of activations + %s GiB of "
    "runtime reserve = %s GiB",
    "gpuShortKv": "%s, which leaves %s GiB for the KV cache after %s GiB of weights%s, %s GiB of "
    "activations and %s GiB of reserve (non-torch memory and CUDA graphs): room for %d tokens at "
    "%d bytes per token, of which a context may take %d%% (%d tokens) for vLLM's own capacity "
    "check to pass, and %s needs %s GiB per GPU",
    "cpuShortKv": "%s does not fit profile %s: a %d GiB KV cache (CPU_KVCACHE_GIB) holds %d "
    "tokens at %d bytes per token, of which a context may take %d (whole %d-token blocks, less "
    "the one vLLM holds back), and %s needs %s GiB",
    # The LoRA term of gpuNoRoom's sum and of gpuShortKv's list, only where LoRA is on.
    "gpuLoraSum": " + %s GiB of LoRA adapter slots (max_loras %d x max_lora_rank %d)",
    "gpuLoraList": ", %s GiB of LoRA adapter slots (max_loras %d x max_lora_rank %d)",
    "neededSet": "MAX_MODEL_LEN=%d",
    "neededAuto": "a usable context of %d tokens",
    "hostParts": "%s GiB weights + %s GiB runtime",
    "hostPartsLora": " + %s GiB LoRA adapters",
    "hostPartsFrontEnds": " + %s GiB for %d front-end processes",
    "hostPartsKv": " + %d GiB KV cache",
    "hostPartsShm": " + %d GiB /dev/shm",
    "hostBelowNeed": "HOST_MEMORY_GIB=%d is less than the %d GiB of host memory %s needs on "
    "profile %s (%s)",
    "hostOverNode": "%s needs %d GiB of host memory on profile %s (%s), more than the %d GiB a "
    "node of this profile gives one pod",
    "dataParallelGpus": "DATA_PARALLEL_SIZE=%d engines at tensor parallel %d need %d GPUs, "
    "more than the %d GPU(s) of a node of profile %s (GPU_COUNT): use at most %d, or leave it "
    "empty for the whole node",
    "dataParallelCores": "DATA_PARALLEL_SIZE=%d engines of %d cores each need %d cores, more "
    "than the %d %s: use at most %d, or set HOST_CPU",
    "coresOfProfile": "a node of profile %s gives one pod",
    "coresOfAny": "one node has",
    "dataParallelFewCores": "HOST_CPU=%d gives the %d engines (DATA_PARALLEL_SIZE) less than "
    "one core each: set HOST_CPU to at least %d",
    # What a refusal for lack of room adds: the profiles that fit, the manifests that fit.
    "fitsProfiles": ". Profiles that fit %s without overrides: %s",
    "fitsNoProfile": ". No profile fits %s",
    "fitsManifests": ". Manifests that fit profile %s: %s",
    "quantizationCpu": "QUANTIZATION=%s does not apply to the cpu profile, which runs %s's "
    "weights as they are (quantization %s in its manifest; vLLM-CPU has no FP8): leave "
    "QUANTIZATION empty",
    "quantizationMismatch": "QUANTIZATION=%s does not match the weights of %s (quantization %s "
    "in its manifest): vLLM runs a pre-quantized checkpoint only in the method it was saved "
    "with, and quantizes only a 16-bit one itself (fp8); leave QUANTIZATION empty",
    "fp8Quantized": "QUANTIZATION=fp8 quantizes a 16-bit checkpoint as vLLM loads it, and %s is "
    "already %s-quantized: leave QUANTIZATION empty",
    "fp8SourceDtype": "QUANTIZATION=fp8 quantizes a 16-bit checkpoint as vLLM loads it (bfloat16 "
    "or float16), and the weights of %s are %s: leave QUANTIZATION empty",
    "fp8NoGpu": "%s=fp8 needs GPUs with FP8 (compute capability 8.9 or newer: Ada, such as the L4 "
    "and L40S, or Hopper, such as the H100 and H200), and the GPUs of profile %s (%s) have none",
    "capabilityOf": "compute capability %s",
}


class Refused(ValueError):
    """The profile cannot serve the model. `fit` is True for a lack of room (then the caller
    adds the profiles and manifests that would fit), False for a bad choice of values."""

    def __init__(self, message: str, *, fit: bool) -> None:
        super().__init__(message)
        self.fit = fit


def _refused(key: str, *args: object, fit: bool) -> Refused:
    return Refused(MESSAGES[key] % args, fit=fit)


# What the cpu profile may compute in (CPU_DTYPE); the first is the default.
CPU_DTYPES = ("float32", "bfloat16")


def cpu_dtype(quantized: bool) -> str:
    """The dtype vLLM-CPU computes in by default: float32 for every unquantized model, on
    every CPU (CPU_DTYPE=bfloat16 is the operator's choice for CPUs with native bfloat16).

    On CPUs without native bfloat16 (AVX2 only) PyTorch emulates bfloat16, about 5x slower
    (SmolLM2-135M, 42-token prefill: 1.05-1.1 s in bfloat16, 0.20-0.22 s in float32). On a
    host with native bfloat16 (AMX) the demo model's greedy answer to "What is the capital of
    France?" went wrong in bfloat16 and right in float32. float32 is right on both and the
    sizing counts its 4 bytes per value. Quantized models run in their checkpoint's dtype
    ("auto"), and CPU_DTYPE is refused for them: vLLM-CPU's INT8 W8A8 kernel on AMX CPUs takes
    16-bit activations only (float32 stops the engine at its first batch with
    "int8_scaled_mm_with_quant: expect A to be bfloat16 or half", seen on a Xeon with AMX)."""
    return "auto" if quantized else "float32"


@dataclass(frozen=True)
class ModelFacts:
    """What sizing needs of a manifest."""

    id: str
    task: str
    quantization: str
    weight_dtype: str
    weight_bytes: int
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int  # the MLP's width
    vocab_size: int
    max_positions: int  # the longest sequence vLLM accepts for the model
    # LoRA (lora.lora_slots): vLLM's max_loras and max_lora_rank; 0: LoRA off.
    lora_slots: int = 0
    lora_rank: int = 0
    # Whether the embedding and the LM head get LoRA slots (LORA_NO_EMBEDDING_MODEL_TYPES).
    lora_embeddings: bool = True
    # For the FP8 weight bytes (fp8_weight_bytes): the parameter count and whether the LM head
    # shares the input embedding's matrix (tie_word_embeddings).
    parameters: int = 0
    tied_embeddings: bool = False

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> ModelFacts:
        """The manifest's facts, with the LoRA slots the backend gives its adapters by default
        (every adapter, their largest rank); the start-up check replaces them with the
        settings' (`with_lora`)."""
        arch = manifest.architecture
        facts = cls(
            id=manifest.id,
            task=str(manifest.task.value),
            quantization=manifest.quantization.method,
            weight_dtype=str(arch.weight_dtype.value),
            weight_bytes=manifest.weight_bytes,
            layers=arch.layers,
            attention_heads=arch.attention_heads,
            kv_heads=arch.kv_heads,
            head_dim=arch.head_dim,
            hidden_size=arch.hidden_size,
            intermediate_size=arch.intermediate_size,
            vocab_size=arch.vocab_size,
            max_positions=arch.context_limit,
            lora_embeddings=arch.model_type not in LORA_NO_EMBEDDING_MODEL_TYPES,
            parameters=arch.parameters,
            tied_embeddings=arch.tied_embeddings,
        )
        # (An unlocked adapter has no rank yet; it cannot be packaged, so any stands in.)
        ranks = [a.rank or 1 for a in manifest.adapters]
        return facts.with_lora(lora.lora_slots(ranks))

    def with_lora(self, slots: lora.LoraSlots | None) -> ModelFacts:
        """These facts with LoRA at `slots` (None: off)."""
        if slots is None:
            return dataclasses.replace(self, lora_slots=0, lora_rank=0)
        return dataclasses.replace(self, lora_slots=slots.max_loras, lora_rank=slots.max_lora_rank)

    def lora_values_per_slot(self, tensor_parallel_size: int) -> int:
        """The values of one LoRA slot on each of `tensor_parallel_size` GPUs (see the
        LoRA constants above for the vLLM code they follow); 0 with LoRA off."""
        if not self.lora_slots:
            return 0
        t = tensor_parallel_size
        q = self.attention_heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        hidden = self.hidden_size
        per_layer = 7 * hidden + (2 * q + 2 * kv) // t + 3 * ceil_div(self.intermediate_size, t)
        embeddings = 2 * (self.vocab_size + hidden) if self.lora_embeddings else 0
        return self.lora_rank * (self.layers * per_layer + embeddings)

    def lora_bytes(self, tensor_parallel_size: int, value_bytes: int) -> int:
        """Bytes of vLLM's stacked LoRA buffers on each GPU: every slot, `value_bytes` each."""
        return self.lora_slots * self.lora_values_per_slot(tensor_parallel_size) * value_bytes

    @property
    def kv_elements_per_token(self) -> int:
        """K and V, per layer and KV head: 2 x layers x kv_heads x head_dim values per token.
        Embedding (encoder-only) models keep no KV cache."""
        if self.task == "embed":
            return 0
        return 2 * self.layers * self.kv_heads * self.head_dim

    @property
    def min_context(self) -> int:
        return min(USABLE_CONTEXT, align(self.max_positions))

    @property
    def quantized(self) -> bool:
        return self.quantization != "none"


@dataclass(frozen=True)
class Hardware:
    """A profile's hardware and engine defaults; GPU fields are None where a variable must
    supply them (the custom profile), and gpu_count is 0 for the CPU."""

    name: str
    gpu_count: int | None
    gpu_memory_mib: int | None
    host_cpu: int
    host_memory_gib: int | None
    host_max_cpu: int | None
    util_permille: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enforce_eager: bool
    cpu_kvcache_gib: int | None
    # Nodes the model spans (a LeaderWorkerSet group): pipeline parallel across them, one
    # stage per node, tensor parallel inside each.
    nodes: int = 1
    # The GPUs' CUDA compute capability, "8.9"; None: not given (the CPU, the custom profile).
    compute_capability: str | None = None

    @property
    def flavor(self) -> str:
        return "cpu" if self.gpu_count == 0 else "cuda"

    @property
    def fp8(self) -> bool:
        """Whether the GPUs have FP8 (FP8_MIN_CAPABILITY). GPUs whose class the profile does not
        name (custom) may: the deploy allows FP8 there, and the backend's start-up check, which
        reads the real GPUs' capability from NVML, refuses it on GPUs without."""
        if self.flavor == "cpu":
            return False
        if self.compute_capability is None:
            return True
        return capability_int(self.compute_capability) >= FP8_MIN_CAPABILITY

    @property
    def capability_text(self) -> str:
        """The GPUs' capability as the fp8NoGpu refusal names it ("" where it never refuses)."""
        if self.compute_capability is None:
            return ""
        return MESSAGES["capabilityOf"] % self.compute_capability

    def bound(self, field: str) -> int | None:
        """The most a bounded override (a BOUNDS field) may ask of this hardware; None: the
        hardware does not say (then Bound.most applies)."""
        gpu_memory_gib = None if self.gpu_memory_mib is None else self.gpu_memory_mib // 1024
        return {
            "gpu_count": self.gpu_count,
            "gpu_memory_gib": gpu_memory_gib,
            "host_cpu": self.host_max_cpu,
            "host_memory_gib": self.host_memory_gib,
        }[field]


@dataclass(frozen=True)
class Overrides:
    """Deploy-time variables (or a backend's final settings); None means "the profile's"."""

    gpu_count: int | None = None
    gpu_memory_gib: int | None = None
    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    util_permille: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str | None = None
    cpu_kvcache_gib: int | None = None
    cpu_dtype: str | None = None
    host_cpu: int | None = None
    host_memory_gib: int | None = None
    data_parallel_size: int | None = None
    quantization: str | None = None  # QUANTIZATION: one of QUANTIZATIONS
    api_processes: int | None = None  # API_PROCESSES: front-end processes (None: one)


NO_OVERRIDES = Overrides()

# Override fields that only mean something with GPUs, by their variable names.
GPU_ONLY_VARIABLES = {
    "gpu_count": "GPU_COUNT",
    "gpu_memory_gib": "GPU_MEMORY_GIB",
    "tensor_parallel_size": "TENSOR_PARALLEL_SIZE",
    "util_permille": "GPU_MEMORY_UTILIZATION",
    "kv_cache_dtype": "KV_CACHE_DTYPE",
}


@dataclass(frozen=True)
class TpCost:
    """One tensor-parallel size: what each GPU holds besides activations and KV cache, and
    what the pod needs beside the weights."""

    weight_bytes: int  # each rank's share of the weights
    reserve_bytes: int  # per GPU: non-torch memory (CUDA/NCCL workspaces) and CUDA graphs
    host_runtime_bytes: int  # host memory of the processes, before activations (CPU)
    shm_gib: int  # /dev/shm
    # host memory each engine past the first adds (data parallel): its engine core and workers
    engine_host_bytes: int = 0
    lora_bytes: int = 0  # per GPU: vLLM's stacked LoRA buffers (0 on the CPU: see host)
    # per engine, in host memory: the workers' adapter caches (on the CPU also the buffers)
    host_lora_bytes: int = 0


@dataclass(frozen=True)
class Costs:
    """One model on one kind of hardware (cpu or cuda), as byte and token counts: every
    quantity a fit adds up, so that the chart can re-add them for overrides."""

    model: str
    flavor: str
    embedding: bool
    quantization: str
    dtype: str  # what the engine computes in
    max_positions: int
    min_context: int
    weight_bytes: int  # the weights in memory, at the compute dtype
    kv_bytes: dict[str, int]  # per token, by KV-cache dtype; 0: no KV cache
    activation_bytes_per_batched_token: int
    activation_bytes_per_seq: int
    tensor_parallel: dict[int, TpCost]  # the sizes that split every head evenly
    attention_heads: int
    kv_heads: int
    startup_seconds: int
    # LoRA: max_loras and max_lora_rank, for the refusals' breakdown (0: off)
    lora_slots: int = 0
    lora_rank: int = 0
    # The weights in GPU memory by the quantization the engine runs (the manifest's own, and
    # fp8 where a 16-bit checkpoint may take it; cuda flavor), all ranks together: QUANTIZATION
    # picks one, as KV_CACHE_DTYPE picks kv_bytes. (The host still maps the checkpoint's
    # weight_bytes, and loading reads them: startup_seconds.)
    gpu_weight_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    weight_dtype: str = ""  # the checkpoint's unquantized dtype (manifest weight_dtype)


def capability_int(capability: str | None) -> int:
    """A capability as vLLM compares it (DeviceCapability.to_int): "8.9" is 89; None: 0."""
    if capability is None:
        return 0
    major, minor = capability.split(".")
    return int(major) * 10 + int(minor)


def embedding_parameters(model: ModelFacts) -> int:
    """The input embedding and, unless tied to it, the LM head: vocab_size x hidden_size each."""
    return model.vocab_size * model.hidden_size * (1 if model.tied_embeddings else 2)


def fp8_weight_bytes(model: ModelFacts) -> int | None:
    """The weights in GPU memory under QUANTIZATION=fp8; None where the checkpoint cannot take
    it (already quantized, or not 16-bit).

    vLLM's online FP8 quantizes the LinearBase layers only (vllm/model_executor/layers/
    quantization/online/base.py OnlineQuantizationConfig.get_quant_method; in 0.32 `fp8` on a
    16-bit checkpoint is that config, vllm/model_executor/model_loader/weight_utils.py
    get_quant_config, which replaced fp8.py Fp8Config's online path): their weights become 1
    byte each. The input embedding and the LM head (VocabParallelEmbedding, ParallelLMHead) get
    no quantization method and stay 16-bit. So do the norms, which this counts at 1 byte: at
    most (4 x layers + 1) x hidden_size bytes short, 0.5 MiB for Llama-3.1-8B. Each linear layer
    adds a float32 per-tensor weight scale (Fp8PerTensorOnlineLinearMethod), a few KiB for the
    whole model: negligible, not counted. The 16-bit weights are loaded on the meta device and
    quantized layer by layer (OnlineLinearBase), so the whole 16-bit model never sits in GPU
    memory."""
    embedding = embedding_parameters(model)
    if model.quantized or model.weight_dtype not in FP8_SOURCE_DTYPES:
        return None
    if model.parameters <= embedding:  # no parameter count (facts built by hand): no linears
        return None
    return (model.parameters - embedding) * 1 + embedding * 2


def tp_candidates(model: ModelFacts, gpu_count: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts: each rank gets whole attention and KV heads, and the
    node's GPUs split evenly."""
    return [
        t
        for t in range(1, gpu_count + 1)
        if model.attention_heads % t == 0 and model.kv_heads % t == 0 and gpu_count % t == 0
    ]


def gpu_reserve_bytes(tensor_parallel_size: int) -> int:
    """Per GPU, what vLLM's profiling takes besides weights and activations: non-torch memory
    and CUDA graphs, both larger once NCCL and the custom all-reduce join in."""
    if tensor_parallel_size > 1:
        return TP_NON_TORCH_BYTES + TP_CUDA_GRAPH_BYTES
    return NON_TORCH_BYTES + CUDA_GRAPH_BYTES


def costs_for(model: ModelFacts, flavor: str, dtype: str | None = None) -> Costs:
    """The formulas: what the model costs on the CPU (vLLM-CPU, in `dtype`, default
    `cpu_dtype`) or on NVIDIA GPUs (vLLM's `auto`)."""
    on_cpu = flavor == "cpu"
    if not on_cpu:
        dtype = "auto"
    elif dtype is None:
        dtype = cpu_dtype(model.quantized)
    # float32 from 16-bit weights doubles them in memory; "auto" keeps the checkpoint's dtype.
    widen = 2 if dtype == "float32" and model.weight_dtype in ("bfloat16", "float16") else 1
    weight_bytes = model.weight_bytes * widen
    # KV values are stored in the compute dtype (4 bytes in float32, else 2), or fp8 (1).
    value_bytes = 4 if dtype == "float32" else 2
    kv_bytes = {"auto": model.kv_elements_per_token * value_bytes}
    # LoRA buffers and adapters are in the compute dtype too (lora_dtype "auto").
    lora_at_tp1 = model.lora_bytes(1, value_bytes)
    if on_cpu:
        sizes = {
            1: TpCost(
                weight_bytes=0,
                reserve_bytes=0,
                host_runtime_bytes=HOST_RUNTIME_BYTES,
                shm_gib=CPU_SHM_GIB,
                engine_host_bytes=HOST_BYTES_PER_ENGINE,
                host_lora_bytes=LORA_CPU_HOST_COPIES * lora_at_tp1,
            )
        }
    else:
        kv_bytes["fp8"] = model.kv_elements_per_token
        sizes = {
            t: TpCost(
                weight_bytes=ceil_div(weight_bytes, t),
                reserve_bytes=gpu_reserve_bytes(t),
                host_runtime_bytes=HOST_RUNTIME_BYTES + HOST_BYTES_PER_GPU_WORKER * t,
                shm_gib=t * SHM_BYTES_PER_RANK // GIB if t > 1 else 0,
                engine_host_bytes=HOST_BYTES_PER_ENGINE + HOST_BYTES_PER_GPU_WORKER * t,
                lora_bytes=model.lora_bytes(t, value_bytes),
                host_lora_bytes=t * lora_at_tp1,  # each worker's adapter cache
            )
            for t in tp_candidates(model, MAX_GPUS)
        }
    return Costs(
        model=model.id,
        flavor=flavor,
        embedding=model.task == "embed",
        quantization=model.quantization,
        dtype=dtype,
        max_positions=model.max_positions,
        min_context=model.min_context,
        weight_bytes=weight_bytes,
        kv_bytes=kv_bytes,
        # The activation constant is for 16-bit values; float32 holds twice the bytes.
        activation_bytes_per_batched_token=(
            model.hidden_size * ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN * value_bytes // 2
        ),
        activation_bytes_per_seq=model.vocab_size * SAMPLER_BYTES_PER_SEQ_PER_VOCAB,
        tensor_parallel=sizes,
        attention_heads=model.attention_heads,
        kv_heads=model.kv_heads,
        startup_seconds=startup_seconds(model),
        lora_slots=model.lora_slots,
        lora_rank=model.lora_rank,
        gpu_weight_bytes=gpu_weight_bytes(model, flavor, weight_bytes),
        weight_dtype=model.weight_dtype,
    )


def gpu_weight_bytes(model: ModelFacts, flavor: str, weight_bytes: int) -> dict[str, int]:
    """Costs.gpu_weight_bytes: the checkpoint as it is (`weight_bytes`, at the compute dtype)
    under its own method, and on GPUs fp8 where the checkpoint may take it."""
    table = {model.quantization: weight_bytes}
    fp8 = fp8_weight_bytes(model)
    if flavor != "cpu" and fp8 is not None:
        table["fp8"] = fp8
    return table


@dataclass(frozen=True)
class Fit:
    """The values a profile runs the model with."""

    profile: str
    model: str
    gpus: int
    gpu_memory_mib: int  # of each GPU, as sized (0 on the CPU)
    tensor_parallel_size: int
    data_parallel_size: int  # engines, each of tensor_parallel_size GPUs (data_parallel_gpu/_cpu)
    dtype: str
    kv_cache_dtype: str
    util_permille: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enforce_eager: bool
    cpu_kvcache_gib: int | None
    kv_bytes_per_token: int
    kv_capacity_tokens: int | None  # None: no KV cache (embedding models)
    shm_gib: int
    host_memory_gib: int
    host_cpu: int
    startup_seconds: int
    # Per pod: gpus, gpu_memory_mib, shm_gib, host_memory_gib and host_cpu are one node's.
    nodes: int = 1
    pipeline_parallel_size: int = 1
    # What the engine is told to quantize (engine.quantization): fp8, or None for the
    # checkpoint as it was saved (vLLM reads a pre-quantized checkpoint's method from its
    # config.json quantization_config, so QUANTIZATION=<the manifest's own> tells it nothing).
    quantization: str | None = None

    @property
    def parallelism(self) -> str:
        """TP 1 x DP 8 (eight engines on one node), or TP 8 x DP 1 x PP 2 across nodes."""
        tp, dp, pp = self.tensor_parallel_size, self.data_parallel_size, self.pipeline_parallel_size
        return f"TP {tp} x DP {dp}" + (f" x PP {pp}" if pp > 1 else "")

    @property
    def summary(self) -> str:
        return f"{self.profile} ({self.parallelism}, max_model_len {self.max_model_len})"


def cpu_usable_tokens(capacity: int) -> int:
    """Of vLLM-CPU's KV cache capacity, what a context may take: whole blocks, less one."""
    return max(capacity // CPU_BLOCK_SIZE - 1, 0) * CPU_BLOCK_SIZE


def usable_tokens(capacity: int) -> int:
    """Of a GPU KV cache's estimated capacity, what a context may take (KV_USABLE_PERCENT)."""
    return capacity * KV_USABLE_PERCENT // 100


def align(tokens: int) -> int:
    """Down to a multiple of vLLM's block size."""
    return tokens // BLOCK_SIZE * BLOCK_SIZE


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def gib(n: int) -> str:
    """Bytes as GiB with one decimal, rounded down (the chart prints the same digits)."""
    tenths = n * 10 // GIB
    return f"{tenths // 10}.{tenths % 10}"


def permille(p: int) -> str:
    """gpu_memory_utilization as written: 920 -> "0.92"."""
    return f"0.{p:03d}".rstrip("0")


def parse_permille(text: str) -> int:
    """GPU_MEMORY_UTILIZATION's text to permille, as the chart parses it: "0.92" -> 920."""
    return int((text.split(".", 1)[1] + "00")[:3])


def startup_seconds(model: ModelFacts) -> int:
    return STARTUP_BASE_SECONDS + model.weight_bytes // LOAD_BYTES_PER_SECOND


def size(
    model: ModelFacts,
    hardware: Hardware,
    overrides: Overrides = NO_OVERRIDES,
    flavor: str | None = None,
) -> Fit:
    """The values the profile runs the model with, or Refused with the reason in numbers."""
    if flavor is not None and hardware.flavor != flavor:
        raise _refused("flavor", hardware.name, hardware.flavor, flavor, fit=False)
    return fit(costs_for(model, hardware.flavor, overrides.cpu_dtype), hardware, overrides)


def fit(costs: Costs, hardware: Hardware, overrides: Overrides = NO_OVERRIDES) -> Fit:
    """The fit of one model's costs (in the dtype it runs) on one profile's hardware, step by
    step as the chart's override check repeats it."""
    _check_variables(costs, hardware, overrides)
    _check_quantization(costs, hardware, overrides)
    _check_bounds(hardware, overrides)
    demand = _context_and_batch(costs, hardware, overrides)
    if hardware.flavor == "cpu":
        return _fit_cpu(costs, hardware, overrides, demand)
    return _fit_gpu(costs, hardware, overrides, demand)


@dataclass(frozen=True)
class _Demand:
    """What the settings ask of any hardware before the KV cache is sized."""

    required: int  # the context the KV cache must hold
    seqs: int  # max_num_seqs
    batched: int  # max_num_batched_tokens
    activation: int  # bytes of vLLM's profiling pass at that batch


def _check_variables(costs: Costs, hardware: Hardware, overrides: Overrides) -> None:
    if hardware.flavor == "cpu":
        for field, variable in GPU_ONLY_VARIABLES.items():
            if getattr(overrides, field) is not None:
                raise _refused("gpuOnly", variable, fit=False)
        if costs.quantization not in CPU_QUANTIZATIONS:
            raise _refused("cpuQuantization", costs.model, costs.quantization, fit=True)
        if overrides.cpu_dtype is not None and costs.quantization != "none":
            raise _refused("cpuDtypeQuantized", costs.model, costs.quantization, fit=False)
    elif overrides.cpu_kvcache_gib is not None:
        raise _refused("cpuOnly", hardware.name, fit=False)
    elif overrides.cpu_dtype is not None:
        raise _refused("cpuDtypeOnly", hardware.name, fit=False)
    if costs.embedding and hardware.nodes > 1:
        raise _refused("multiNodeEmbed", costs.model, hardware.name, hardware.nodes, fit=True)
    # The front ends are clients of engine cores their own node starts (backend/frontends.py).
    if (overrides.api_processes or 1) > 1 and hardware.nodes > 1:
        args = (overrides.api_processes, hardware.name, hardware.nodes)
        raise _refused("apiProcessesNodes", *args, fit=False)


def _check_quantization(costs: Costs, hardware: Hardware, o: Overrides) -> None:
    """QUANTIZATION against the manifest's weights and the GPUs, and KV_CACHE_DTYPE=fp8
    against the GPUs; the chart's override check takes the same steps."""
    q = o.quantization
    own = q is None or q == costs.quantization
    if hardware.flavor == "cpu":
        if not own:
            raise _refused("quantizationCpu", q, costs.model, costs.quantization, fit=False)
        return
    if o.kv_cache_dtype == "fp8" and not hardware.fp8:
        where = (hardware.name, hardware.capability_text)
        raise _refused("fp8NoGpu", "KV_CACHE_DTYPE", *where, fit=False)
    if own:
        return
    if q != "fp8":
        raise _refused("quantizationMismatch", q, costs.model, costs.quantization, fit=False)
    if costs.quantization != "none":
        raise _refused("fp8Quantized", costs.model, costs.quantization, fit=False)
    if "fp8" not in costs.gpu_weight_bytes:
        raise _refused("fp8SourceDtype", costs.model, costs.weight_dtype, fit=False)
    if not hardware.fp8:
        where = (hardware.name, hardware.capability_text)
        raise _refused("fp8NoGpu", "QUANTIZATION", *where, fit=False)


def _check_bounds(hardware: Hardware, o: Overrides) -> None:
    """No override may ask for more than the profile's hardware has (or any hardware has)."""
    for b in BOUNDS:
        value = getattr(o, b.field)
        if value is None:
            continue
        limit = hardware.bound(b.field)
        if limit is not None and value > limit:
            args = (b.variable, value, limit, b.unit, hardware.name, b.why)
            raise _refused("overProfile", *args, fit=False)
        if limit is None and value > b.most:
            args = (b.variable, value, b.most, b.unit, b.most_what, b.why)
            raise _refused("overAny", *args, fit=False)


def _context_and_batch(costs: Costs, hardware: Hardware, o: Overrides) -> _Demand:
    """The required context and the batch limits, checked as vLLM checks them."""
    if o.max_model_len is not None and o.max_model_len > costs.max_positions:
        raise _refused("tooLong", o.max_model_len, costs.max_positions, costs.model, fit=False)
    if o.max_model_len is not None and o.max_model_len < costs.min_context:
        floor = costs.min_context
        raise _refused("tooShort", o.max_model_len, floor, costs.model, floor, fit=False)
    required = o.max_model_len or costs.min_context
    seqs = o.max_num_seqs or hardware.max_num_seqs
    batched = o.max_num_batched_tokens or hardware.max_num_batched_tokens
    if costs.embedding:
        # Pooling models run without chunked prefill: a whole input must fit one batch.
        length = o.max_model_len or _auto_len(costs, hardware, None)
        if o.max_num_batched_tokens is None:
            batched = max(batched, length)
        if batched < length:
            raise _refused("embedBatch", costs.model, batched, length, fit=False)
    if batched < seqs:
        raise _refused("batchSeqs", batched, seqs, fit=False)
    activation = (
        costs.activation_bytes_per_batched_token * batched + costs.activation_bytes_per_seq * seqs
    )
    return _Demand(required, seqs, batched, activation)


def _auto_len(costs: Costs, hardware: Hardware, capacity: int | None) -> int:
    """The longest context the model, the profile's class and the KV cache allow."""
    length = min(costs.max_positions, hardware.max_model_len)
    if capacity is not None:
        length = min(length, capacity)
    return align(length)


def _needed(o: Overrides, required: int) -> str:
    return MESSAGES["neededSet" if o.max_model_len is not None else "neededAuto"] % required


def _fit_cpu(costs: Costs, hw: Hardware, o: Overrides, demand: _Demand) -> Fit:
    required = demand.required
    kv_bytes = costs.kv_bytes["auto"]
    kv_gib = o.cpu_kvcache_gib or hw.cpu_kvcache_gib or 0
    capacity = kv_gib * GIB // kv_bytes if kv_bytes else None
    usable = cpu_usable_tokens(capacity) if capacity is not None else None
    if capacity is not None and usable is not None and usable < required:
        blocks = ceil_div(required, CPU_BLOCK_SIZE) + 1  # and the null block
        raise _refused(
            "cpuShortKv",
            costs.model,
            hw.name,
            kv_gib,
            capacity,
            kv_bytes,
            usable,
            CPU_BLOCK_SIZE,
            _needed(o, required),
            gib(blocks * CPU_BLOCK_SIZE * kv_bytes),
            fit=True,
        )
    one = costs.tensor_parallel[1]
    dp = data_parallel_cpu(hw, o)
    engines = EngineHost(dp, one, demand.activation, kv_gib, weight_copies=dp)
    return Fit(
        profile=hw.name,
        model=costs.model,
        gpus=0,
        gpu_memory_mib=0,
        tensor_parallel_size=1,
        data_parallel_size=dp,
        dtype=costs.dtype,
        kv_cache_dtype="auto",
        util_permille=hw.util_permille,
        max_model_len=o.max_model_len or _auto_len(costs, hw, usable),
        max_num_seqs=demand.seqs,
        max_num_batched_tokens=demand.batched,
        enforce_eager=hw.enforce_eager,
        cpu_kvcache_gib=kv_gib,
        kv_bytes_per_token=kv_bytes,
        kv_capacity_tokens=capacity,
        shm_gib=engines.shm_gib,
        host_memory_gib=engines.host_memory_gib(costs, hw, o),
        host_cpu=o.host_cpu or hw.host_cpu * dp,
        startup_seconds=costs.startup_seconds,
    )


@dataclass(frozen=True)
class _GpuBudget:
    """Each GPU's memory for one model, as a function of the tensor-parallel size t."""

    costs: Costs
    profile: str
    gpu_count: int
    memory_mib: int
    util_permille: int
    kv_bytes: int  # per token, all ranks together; 0: no KV cache (embedding models)
    activation: int
    # Pipeline stages, one per node: each GPU holds 1/stages of the layers, so of the weights
    # and of every token's KV cache. (The split is taken as even: the first and last stages
    # also hold the embeddings and the output head, a few tenths of a GiB per GPU for a
    # 405B-class model, which the KV margin below absorbs.)
    stages: int = 1
    # The whole model's weights in GPU memory under another quantization than the checkpoint's
    # own (Costs.gpu_weight_bytes[QUANTIZATION]); None: the checkpoint's, TpCost.weight_bytes.
    quantized_weight_bytes: int | None = None

    @property
    def cuda_total(self) -> int:
        """The GPU's total as CUDA reports it, at the least (nvidia-smi's less the shortfall)."""
        return self.memory_mib * MIB - CUDA_TOTAL_SHORTFALL_BYTES

    @property
    def budget(self) -> int:
        """What vLLM may use of each GPU: CUDA's total x gpu_memory_utilization."""
        return self.cuda_total * self.util_permille // 1000

    def check_utilization(self) -> None:
        """Refuses a gpu_memory_utilization that vLLM's free-memory check at start would."""
        free = self.cuda_total - FREE_AT_START_SHORTFALL_BYTES
        if self.budget > free:
            highest = free * 100 // self.cuda_total * 10  # the variable takes two decimals
            total = self.memory_mib * MIB
            asked = (permille(self.util_permille), gib(self.budget), gib(total), gib(free))
            raise _refused("utilTooHigh", *asked, permille(highest), fit=False)

    def weights(self, t: int) -> int:
        """Each GPU's share of the weights: its tensor-parallel share of its stage's layers."""
        share = self.costs.tensor_parallel[t].weight_bytes
        if self.quantized_weight_bytes is not None:
            share = ceil_div(self.quantized_weight_bytes, t)
        return ceil_div(share, self.stages)

    def lora(self, t: int) -> int:
        """Each GPU's LoRA buffers: its stage's layers' share, split as evenly as the weights."""
        return ceil_div(self.costs.tensor_parallel[t].lora_bytes, self.stages)

    def room(self, t: int) -> int:
        """Bytes per GPU left for the KV cache."""
        cost = self.costs.tensor_parallel[t]
        return self.budget - self.weights(t) - self.activation - cost.reserve_bytes - self.lora(t)

    def lora_part(self, t: int, key: str) -> str:
        """The LoRA term of a refusal's breakdown (MESSAGES[key]); empty with LoRA off."""
        if not self.lora(t):
            return ""
        return MESSAGES[key] % (gib(self.lora(t)), self.costs.lora_slots, self.costs.lora_rank)

    def capacity(self, t: int) -> int:
        """Tokens the whole KV cache holds: each rank keeps 1/t of every token's KV heads, of
        its stage's layers."""
        room = self.room(t)
        return room * t * self.stages // self.kv_bytes if room > 0 and self.kv_bytes else 0

    def usable(self, t: int) -> int:
        """The longest context the cache is sized for: the capacity less the margin."""
        return usable_tokens(self.capacity(t))

    def holds(self, t: int, tokens: int) -> bool:
        return self.room(t) >= 0 if self.kv_bytes == 0 else self.usable(t) >= tokens

    def misfit(self, t: int, needed: str, required: int) -> Refused:
        cost = self.costs.tensor_parallel[t]
        where = MESSAGES["gpuBudget"] % (
            self.costs.model,
            self.profile,
            t,
            self.gpu_count,
            gib(self.memory_mib * MIB),
            permille(self.util_permille),
            gib(self.budget),
        )
        weights, activation, reserve = self.weights(t), self.activation, cost.reserve_bytes
        if self.room(t) < 0 or self.kv_bytes == 0:
            total = weights + self.lora(t) + activation + reserve
            lora_sum = self.lora_part(t, "gpuLoraSum")
            parts = (gib(weights), lora_sum, gib(activation), gib(reserve), gib(total))
            return _refused("gpuNoRoom", where, *parts, fit=True)
        return _refused(
            "gpuShortKv",
            where,
            gib(self.room(t)),
            gib(weights),
            self.lora_part(t, "gpuLoraList"),
            gib(activation),
            gib(reserve),
            self.capacity(t),
            self.kv_bytes,
            KV_USABLE_PERCENT,
            self.usable(t),
            needed,
            gib(ceil_div(required * self.kv_bytes * 100, KV_USABLE_PERCENT * t * self.stages)),
            fit=True,
        )


def _fit_gpu(costs: Costs, hw: Hardware, o: Overrides, demand: _Demand) -> Fit:
    required = demand.required
    gpu_count = o.gpu_count or hw.gpu_count
    memory_mib = o.gpu_memory_gib * 1024 if o.gpu_memory_gib is not None else hw.gpu_memory_mib
    if gpu_count is None or memory_mib is None:
        raise _refused("customNeedsGpus", hw.name, fit=False)
    kv_dtype = o.kv_cache_dtype or "auto"
    other = o.quantization is not None and o.quantization != costs.quantization
    gpu = _GpuBudget(
        costs=costs,
        profile=hw.name,
        gpu_count=gpu_count,
        memory_mib=memory_mib,
        util_permille=o.util_permille or hw.util_permille,
        kv_bytes=costs.kv_bytes[kv_dtype],
        activation=demand.activation,
        stages=hw.nodes,
        quantized_weight_bytes=costs.gpu_weight_bytes[o.quantization] if other else None,
    )
    gpu.check_utilization()
    candidates = [t for t in costs.tensor_parallel if gpu_count % t == 0]
    if o.tensor_parallel_size is not None:
        tp = o.tensor_parallel_size
        if tp not in candidates:
            valid = ", ".join(str(c) for c in candidates)
            raise _refused(
                "badTensorParallel",
                tp,
                costs.model,
                gpu_count,
                costs.attention_heads,
                costs.kv_heads,
                gpu_count,
                valid,
                fit=False,
            )
    else:
        # The smallest size with a useful cache leaves the node's other GPUs free; failing
        # that, the largest size the heads allow gives the most room.
        target = o.max_model_len or _auto_len(costs, hw, None)
        useful = USEFUL_KV_SEQUENCES * target
        tp = next((t for t in candidates if gpu.holds(t, useful)), candidates[-1])
        if hw.nodes > 1:
            # A profile spans nodes for a model one node cannot hold: it takes whole nodes.
            tp = candidates[-1]
    if not gpu.holds(tp, required):
        raise gpu.misfit(tp, _needed(o, required), required)
    capacity = gpu.capacity(tp) if gpu.kv_bytes else None
    usable = gpu.usable(tp) if gpu.kv_bytes else None
    cost = costs.tensor_parallel[tp]
    dp = data_parallel_gpu(hw, o, gpu_count, tp)
    engines = EngineHost(dp, cost, 0, 0, weight_copies=1)
    return Fit(
        profile=hw.name,
        model=costs.model,
        gpus=tp * dp,
        gpu_memory_mib=memory_mib,
        tensor_parallel_size=tp,
        data_parallel_size=dp,
        dtype=costs.dtype,
        kv_cache_dtype=kv_dtype,
        util_permille=gpu.util_permille,
        max_model_len=o.max_model_len or _auto_len(costs, hw, usable),
        max_num_seqs=demand.seqs,
        max_num_batched_tokens=demand.batched,
        enforce_eager=hw.enforce_eager,
        cpu_kvcache_gib=None,
        kv_bytes_per_token=gpu.kv_bytes,
        kv_capacity_tokens=capacity,
        shm_gib=engines.shm_gib,
        host_memory_gib=engines.host_memory_gib(costs, hw, o),
        host_cpu=o.host_cpu or hw.host_cpu * tp * dp,
        startup_seconds=costs.startup_seconds,
        nodes=hw.nodes,
        pipeline_parallel_size=hw.nodes,
        quantization=o.quantization if other else None,
    )


# -- the whole node: data parallel ----------------------------------------------------------
# Where the model needs fewer GPUs than the node gives it, the rest serve it too: vLLM's own
# data parallel (AsyncEngineArgs data_parallel_size) runs gpu_count // tp engines of tp GPUs in
# the one pod, behind one front end whose DP client balances requests over them
# (vllm/v1/engine/core_client.py DPLBAsyncMPClient). A dense model's engines are independent
# (vllm/v1/engine/core.py: "Non-MoE DP ranks are completely independent"), so each engine's
# GPU memory, KV cache and context are sized exactly as for one; what grows is the pod: its
# GPUs, cores, host memory and /dev/shm count every engine.


def data_parallel_gpu(hw: Hardware, o: Overrides, gpu_count: int, tp: int) -> int:
    """Engines on GPUs: as many as the node's GPUs hold, or DATA_PARALLEL_SIZE, which may not
    ask for more GPUs than the node gives the model."""
    most = gpu_count // tp
    dp = o.data_parallel_size or most
    if dp > most:
        raise _refused("dataParallelGpus", dp, tp, dp * tp, gpu_count, hw.name, most, fit=False)
    return dp


def data_parallel_cpu(hw: Hardware, o: Overrides) -> int:
    """Engines on the CPU: one unless DATA_PARALLEL_SIZE says more. Each engine asks for the
    profile's cores, which together may not exceed what a node gives one pod; with HOST_CPU
    set, that is the pod's whole count, and each engine needs at least one core of it."""
    dp = o.data_parallel_size or 1
    if o.host_cpu is not None:
        if o.host_cpu < dp:
            raise _refused("dataParallelFewCores", o.host_cpu, dp, dp, fit=False)
        return dp
    limit = hw.bound("host_cpu")
    where = MESSAGES["coresOfProfile"] % hw.name
    if limit is None:
        limit, where = MAX_HOST_CPU, MESSAGES["coresOfAny"]
    if hw.host_cpu * dp > limit:
        args = (dp, hw.host_cpu, hw.host_cpu * dp, limit, where, limit // hw.host_cpu)
        raise _refused("dataParallelCores", *args, fit=False)
    return dp


@dataclass(frozen=True)
class EngineHost:
    """The host side of `engines` engines of one tensor-parallel size (`cost`): each engine
    past the first adds its engine core and workers (TpCost.engine_host_bytes), its activations
    (CPU), its KV cache (CPU), its ranks' /dev/shm, and on the CPU its own copy of the weights
    (the parameters are the worker's process memory there; on GPUs the host holds only the
    mmapped files' page cache, which cgroup v2 charges once however many engines read them)."""

    engines: int
    cost: TpCost
    activation: int  # bytes per engine held in host memory (CPU), 0 on GPUs
    kv_gib: int  # per engine, in host memory (CPU), 0 on GPUs
    weight_copies: int

    @property
    def runtime(self) -> int:
        extra = (self.engines - 1) * self.cost.engine_host_bytes
        return self.cost.host_runtime_bytes + extra + self.activation * self.engines

    @property
    def shm_gib(self) -> int:
        return self.cost.shm_gib * self.engines

    @property
    def lora(self) -> int:
        return self.cost.host_lora_bytes * self.engines

    def host_memory_gib(self, costs: Costs, hw: Hardware, o: Overrides) -> int:
        kv_gib = self.kv_gib * self.engines
        return _host_memory(
            costs,
            hw,
            o,
            self.runtime,
            kv_gib,
            self.shm_gib,
            weight_copies=self.weight_copies,
            lora=self.lora,
        )


def _host_memory(
    costs: Costs,
    hw: Hardware,
    o: Overrides,
    runtime: int,
    kv_gib: int,
    shm_gib: int,
    weight_copies: int = 1,
    lora: int = 0,
) -> int:
    """GiB of host memory the pod requests (and is limited to): what loading needs, checked
    against what the operator set (HOST_MEMORY_GIB) or else what the profile's nodes give.
    The safetensors are mmapped and cgroup v2 charges that page cache to the pod, so the
    weights count in full, on each node of a multi-node group too: vLLM's loader
    (safetensors_weights_iterator) reads every tensor of the checkpoint and drops the other
    pipeline stages' after reading; `weight_copies` times where each engine holds its own
    (EngineHost), and `lora` bytes of LoRA adapters (TpCost.host_lora_bytes)."""
    weights = costs.weight_bytes * weight_copies
    front_ends = front_end_host_bytes(o.api_processes)
    need = ceil_div(weights + runtime + lora + front_ends + (kv_gib + shm_gib) * GIB, GIB)
    parts = MESSAGES["hostParts"] % (gib(weights), gib(runtime))
    if lora:
        parts += MESSAGES["hostPartsLora"] % gib(lora)
    if front_ends:
        parts += MESSAGES["hostPartsFrontEnds"] % (gib(front_ends), o.api_processes)
    if kv_gib:
        parts += MESSAGES["hostPartsKv"] % kv_gib
    if shm_gib:
        parts += MESSAGES["hostPartsShm"] % shm_gib
    if o.host_memory_gib is not None:
        if o.host_memory_gib < need:
            raise _refused(
                "hostBelowNeed", o.host_memory_gib, need, costs.model, hw.name, parts, fit=True
            )
        return o.host_memory_gib
    if hw.host_memory_gib is not None and need > hw.host_memory_gib:
        raise _refused(
            "hostOverNode", costs.model, need, hw.name, parts, hw.host_memory_gib, fit=True
        )
    return need


def front_end_host_bytes(api_processes: int | None) -> int:
    """Host memory that API_PROCESSES front ends add to the one process the runtime counts
    (HOST_BYTES_PER_FRONT_END): none for one."""
    count = api_processes or 1
    return 0 if count == 1 else count * HOST_BYTES_PER_FRONT_END


def alternatives(model_id: str, fits: Sequence[str], manifests: Sequence[str], profile: str) -> str:
    """What a refusal for lack of room adds: the profiles that fit the model, the manifests
    that fit the profile (the chart's refusals add the same, from the same MESSAGES)."""
    text = (
        MESSAGES["fitsProfiles"] % (model_id, ", ".join(fits))
        if fits
        else MESSAGES["fitsNoProfile"] % model_id
    )
    if manifests:
        text += MESSAGES["fitsManifests"] % (profile, ", ".join(manifests))
    return text + "."
