"""The start-up check: the final engine settings against the machine the backend runs on,
with the same sizing the chart used (`zarf_vllm.model.sizing`).

The chart refuses what cannot fit before anything is applied; this is the defence for whoever
bypasses it (plain `helm install` with hand-edited values, a pod spec of one's own, a local
run). It needs the model's manifest for the facts; without one it has nothing to size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zarf_vllm.backend.config import ConfigError, EngineSettings
from zarf_vllm.backend.engine import (
    VLLM_QUANTIZATION_NAMES,
    engine_lora_slots,
    resolve_enforce_eager,
)
from zarf_vllm.model import sizing
from zarf_vllm.model.manifest import ModelManifest

# Where the container's memory limit is (cgroup v2, then v1); "max" or absent: no limit.
CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
# vLLM's own batch defaults, used where the settings leave them to vLLM.
VLLM_MAX_NUM_SEQS = 256
VLLM_MAX_NUM_BATCHED_TOKENS = 8192
MACHINE = "this-machine"
# vLLM's CUDA build on a machine where NVML finds no GPU: vLLM falls back to a platform that
# cannot run anything and fails later with a traceback. Said once, here, with what to do.
NO_GPU = (
    "no GPU found: this is the CUDA build of vLLM and {reason}; run it on a node with an "
    "NVIDIA GPU, its driver and the NVIDIA container runtime (the pod must request "
    "nvidia.com/gpu), or use the cpu flavor's image"
)


@dataclass(frozen=True)
class Machine:
    """What the backend sees of its hardware."""

    gpu_count: int  # 0: the CPU engine
    gpu_memory_mib: int  # of each GPU (0 on the CPU)
    memory_limit_bytes: int | None  # the container's limit; None: unlimited
    compute_capability: str | None = None  # of the GPUs, "8.9"; None: the CPU, or not known


def memory_limit_bytes() -> int | None:
    for path in CGROUP_MEMORY_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        # cgroup v1 writes a huge number for "no limit".
        return None if text == "max" or int(text) >= 1 << 60 else int(text)
    return None


def detect_machine() -> Machine:
    """The machine as vLLM's platform reports it."""
    from vllm.platforms import current_platform

    limit = memory_limit_bytes()
    if current_platform.is_cpu():
        return Machine(0, 0, limit)
    if current_platform.is_unspecified():
        raise ConfigError(NO_GPU.format(reason=_nvml_says()))
    # Both through NVML, without creating a CUDA context in this (the API) process; NVML's
    # total is nvidia-smi's, the figure the profiles record.
    count = current_platform.device_count()
    memory = current_platform.get_device_total_memory(0) if count else 0
    # NVML's too (NvmlCudaPlatform.get_device_capability): whether the GPUs have FP8.
    capability = current_platform.get_device_capability(0) if count else None
    text = None if capability is None else f"{capability.major}.{capability.minor}"
    return Machine(count, memory // sizing.MIB, limit, text)


def _nvml_says() -> str:
    """Why NVML (the driver's library) sees no GPU, in its own words: "NVML Shared Library Not
    Found" means no driver was mounted into the container."""
    try:
        from vllm.utils.import_utils import import_pynvml

        pynvml = import_pynvml()
        pynvml.nvmlInit()
        try:
            return f"NVML counts {pynvml.nvmlDeviceGetCount()} GPUs"
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML's errors, or no pynvml: the reason is all we want
        return f"NVML says: {exc}"


def check_fit(
    settings: EngineSettings, manifest: ModelManifest, machine: Machine, api_processes: int = 1
) -> sizing.Fit | None:
    """Sizes the manifest's model with exactly these settings (and `api_processes` front ends,
    server.api_processes) on this machine; raises ConfigError with the sizing's reason, in
    numbers, when it cannot fit. None: nothing to
    check (a generative model on the CPU without a fixed KV-cache size, which vLLM-CPU then
    sizes itself)."""
    # The LoRA slots these settings give the engine, as the engine's arguments get them.
    slots = engine_lora_slots(settings, [a.rank for a in manifest.adapters])
    model = sizing.ModelFacts.from_manifest(manifest).with_lora(slots)
    on_cpu = machine.gpu_count == 0
    if on_cpu and settings.cpu_kvcache_space_gib is None and model.task != "embed":
        return None
    # Every engine (data parallel) takes tensor_parallel_size GPUs of its own.
    gpus = settings.tensor_parallel_size * settings.data_parallel_size
    if not on_cpu and gpus > machine.gpu_count:
        raise ConfigError(
            f"engine.tensor_parallel_size={settings.tensor_parallel_size} x "
            f"engine.data_parallel_size={settings.data_parallel_size} needs {gpus} GPUs; "
            f"this machine has {machine.gpu_count}"
        )
    hardware = sizing.Hardware(
        name=MACHINE,
        gpu_count=0 if on_cpu else gpus,
        gpu_memory_mib=machine.gpu_memory_mib,
        host_cpu=1,
        host_memory_gib=None,
        host_max_cpu=None,
        util_permille=round(settings.gpu_memory_utilization * 1000),
        max_model_len=settings.max_model_len or model.max_positions,
        max_num_seqs=settings.max_num_seqs or VLLM_MAX_NUM_SEQS,
        max_num_batched_tokens=settings.max_num_batched_tokens or VLLM_MAX_NUM_BATCHED_TOKENS,
        enforce_eager=resolve_enforce_eager(settings.enforce_eager, on_cpu=on_cpu),
        cpu_kvcache_gib=settings.cpu_kvcache_space_gib,
        # Pipeline stages split the layers (and so the weights and the KV cache) over GPUs
        # beyond this machine's; the sizing takes one stage per node. (On the CPU, where the
        # KV cache is a fixed size per process, stages change nothing it sizes.)
        nodes=1 if on_cpu else settings.pipeline_parallel_size,
        compute_capability=machine.compute_capability,
    )
    limit = machine.memory_limit_bytes
    overrides = sizing.Overrides(
        max_model_len=settings.max_model_len,
        tensor_parallel_size=None if on_cpu else settings.tensor_parallel_size,
        data_parallel_size=settings.data_parallel_size,
        max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        host_memory_gib=None if limit is None else limit // sizing.GIB,
        kv_cache_dtype=None if on_cpu else _kv_cache_dtype(settings.kv_cache_dtype),
        # "auto" is the sizing's own CPU dtype; the two it sizes are taken as they are.
        cpu_dtype=settings.dtype if on_cpu and settings.dtype in sizing.CPU_DTYPES else None,
        quantization=_quantization(settings.quantization),
        api_processes=api_processes,
    )
    try:
        return sizing.size(model, hardware, overrides)
    except sizing.Refused as exc:
        raise ConfigError(
            f"the engine settings do not fit this machine ({_described(machine)}), by the "
            f"chart's sizing (MAX_MODEL_LEN is engine.max_model_len, CPU_KVCACHE_GIB "
            f"engine.cpu_kvcache_space_gib, HOST_MEMORY_GIB the container's memory limit): {exc}"
        ) from exc


def _kv_cache_dtype(value: str) -> str:
    return "fp8" if value.startswith("fp8") else "auto"


# vLLM's own names for the methods the sizing knows by QUANTIZATION's names: the engine's
# renames read backwards, and the Marlin kernels' names of AWQ and GPTQ.
_VLLM_METHODS = {vllm: ours for ours, vllm in VLLM_QUANTIZATION_NAMES.items()} | {
    "awq_marlin": "awq",
    "gptq_marlin": "gptq",
}


def _quantization(value: str | None) -> str | None:
    """engine.quantization as the sizing's QUANTIZATION (vLLM's spellings mapped back)."""
    return None if value is None else _VLLM_METHODS.get(value, value)


def _described(machine: Machine) -> str:
    memory = (
        "no memory limit"
        if machine.memory_limit_bytes is None
        else f"memory limit {sizing.gib(machine.memory_limit_bytes)} GiB"
    )
    if machine.gpu_count == 0:
        return f"CPU, {memory}"
    capability = (
        ""
        if machine.compute_capability is None
        else f", compute capability {machine.compute_capability}"
    )
    return f"{machine.gpu_count} x {machine.gpu_memory_mib} MiB GPU(s){capability}, {memory}"


def check_this_machine(
    settings: EngineSettings, manifest: ModelManifest | None, api_processes: int = 1
) -> None:
    """check_fit on the machine vLLM's platform sees, logged either way."""
    from zarf_vllm.backend.logs import get_logger, log_event

    logger = get_logger("fit")
    machine = detect_machine()  # first: a missing GPU stops start-up with or without a manifest
    if manifest is None:
        log_event(logger, "fit not checked", reason="no model manifest (model.manifest)")
        return
    fit = check_fit(settings, manifest, machine, api_processes)
    if fit is None:
        log_event(logger, "fit not checked", reason="engine.cpu_kvcache_space_gib is not set")
        return
    log_event(
        logger,
        "fit checked",
        machine=_described(machine),
        max_model_len=fit.max_model_len,
        kv_cache_tokens=fit.kv_capacity_tokens,
        host_memory_gib=fit.host_memory_gib,
    )
