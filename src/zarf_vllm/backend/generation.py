"""Generation shared by chat and completion: prompt to token ids, engine deltas to chunks.

vLLM streams DELTA outputs (only the new tokens' text), and its detokenizer holds back bytes of
a character that is not complete yet, so the text here is never cut inside a multi-byte
character. Outputs that carry no text and no finish reason are dropped: no empty chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zarf_vllm.backend.calls import Call
from zarf_vllm.backend.config import SamplingSettings
from zarf_vllm.backend.engine import Engine, EngineDeadError
from zarf_vllm.backend.sampling import (
    InvalidRequest,
    Limits,
    SamplingRequest,
    build_sampling_params,
)

if TYPE_CHECKING:
    from vllm import SamplingParams


@dataclass(frozen=True)
class Delta:
    """New text for one choice; finish_reason is "stop" or "length" on its last delta."""

    index: int
    text: str
    finish_reason: str | None


@dataclass
class Prepared:
    prompt_ids: list[int]
    params: SamplingParams


class Generator:
    """Turns validated requests into engine calls and engine outputs into deltas."""

    def __init__(
        self,
        engine: Engine,
        defaults: SamplingSettings,
        limits: Limits,
        extra_stop: list[str],
        stream_interval_s: float = 0.0,
    ) -> None:
        self._engine = engine
        self._defaults = defaults
        self._limits = limits
        self._extra_stop = extra_stop
        self._stream_interval_s = stream_interval_s

    async def prepare(
        self,
        prompt: str,
        request: SamplingRequest,
        *,
        add_special_tokens: bool,
        truncate: int | None,
    ) -> Prepared:
        # Before tokenizing: a tokenizer that adds a BOS would turn "" into one token.
        if not prompt:
            raise InvalidRequest("prompt", "the prompt is empty")
        prompt_ids = await self._engine.tokenize(prompt, add_special_tokens=add_special_tokens)
        if truncate is not None:
            if truncate <= 0:
                raise InvalidRequest("truncate", f"must be a positive token count, got {truncate}")
            prompt_ids = prompt_ids[-truncate:]  # keep the end, where the question is
        if not prompt_ids:
            raise InvalidRequest("prompt", "the prompt is empty")
        params = build_sampling_params(
            request,
            prompt_tokens=len(prompt_ids),
            defaults=self._defaults,
            limits=self._limits,
            extra_stop=self._extra_stop,
        )
        return Prepared(prompt_ids, params)

    def stream(self, prepared: Prepared, call: Call) -> AsyncIterator[tuple[list[Delta], bool]]:
        """Yields (deltas, last): one delta per choice with new text.

        At most one yield per stream interval: after a yield, the next output is not taken
        before the interval has passed, and meanwhile vLLM merges the new tokens of this
        request into one delta output. The first token is never held back, and slow streams
        (a token per interval or slower) are not delayed at all; the last chunk can wait up
        to one interval. Fewer, larger messages cut the per-message cost of gRPC, which
        dominates the front end's CPU at high token rates.
        """
        return self._outputs(prepared, call, self._stream_interval_s)

    async def _outputs(
        self, prepared: Prepared, call: Call, interval: float
    ) -> AsyncIterator[tuple[list[Delta], bool]]:
        call.prompt_tokens = len(prepared.prompt_ids)
        loop = asyncio.get_running_loop()
        try:
            # aclosing: when our caller closes this stream early, the engine's stream is closed
            # (and its request aborted) here and now, not whenever it is garbage-collected.
            async with contextlib.aclosing(
                self._engine.generate(prepared.prompt_ids, prepared.params, call.request_id)
            ) as outputs:
                async for output in outputs:
                    deltas = _deltas(output.outputs, call)
                    if not deltas:
                        continue
                    call.first_token()
                    sent_at = loop.time()
                    yield deltas, output.finished
                    if interval and not output.finished:
                        delay = interval - (loop.time() - sent_at)
                        if delay > 0:
                            await asyncio.sleep(delay)
        except EngineDeadError:
            raise
        except Exception as exc:
            if self._engine.dead:
                raise EngineDeadError(str(exc)) from exc
            raise

    async def complete(self, prepared: Prepared, call: Call) -> dict[int, tuple[str, str]]:
        """Runs to the end; returns {choice index: (text, finish_reason)}.

        No stream interval here: one response has no per-message cost to save, and waiting
        would only delay the answer.
        """
        texts: dict[int, list[str]] = {}
        reasons: dict[int, str] = {}
        async for deltas, _ in self._outputs(prepared, call, interval=0.0):
            for delta in deltas:
                texts.setdefault(delta.index, []).append(delta.text)
                if delta.finish_reason:
                    reasons[delta.index] = delta.finish_reason
        return {
            index: ("".join(parts), reasons.get(index, "stop")) for index, parts in texts.items()
        }


def _deltas(completions: list[Any], call: Call) -> list[Delta]:
    deltas = []
    for completion in completions:
        call.completion_tokens += len(completion.token_ids)
        reason = completion.finish_reason
        if reason == "abort":
            raise RuntimeError("the engine aborted the request")
        if completion.text or reason:
            deltas.append(Delta(completion.index, completion.text, reason))
    return deltas
