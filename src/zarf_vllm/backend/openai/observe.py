"""Per-call token counts and time to first token, read off the engine's outputs.

vLLM's serving layer calls the engine itself, so the call tracker cannot count tokens the way
the gRPC services do. Instead the serving layer gets the AsyncLLM behind a thin proxy: every
generate/encode stream it opens is attributed to the call the HTTP request runs in (a context
variable set by the guard) and counted as its outputs pass, unchanged.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator
from typing import Any

from zarf_vllm.backend.calls import Call

CURRENT_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "zarf_vllm_openai_call", default=None
)


class ObservedEngine:
    """The AsyncLLM as vLLM's serving classes see it, with generate/encode counted."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        params = kwargs.get("sampling_params", args[1] if len(args) > 1 else None)
        stream = self._llm.generate(*args, **kwargs)
        # Read now, in the request's context, not when the stream is first iterated.
        return _counted(stream, CURRENT_CALL.get(), _is_delta(params))

    def encode(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return _counted(self._llm.encode(*args, **kwargs), CURRENT_CALL.get(), delta=False)


def _is_delta(params: Any) -> bool:
    from vllm.sampling_params import RequestOutputKind

    return getattr(params, "output_kind", None) == RequestOutputKind.DELTA


async def _counted(
    stream: AsyncIterator[Any], call: Call | None, delta: bool
) -> AsyncIterator[Any]:
    if call is None:  # an engine call outside any HTTP request (none today)
        async for output in stream:
            yield output
        return
    prompt_counted = False
    generated: dict[int, int] = {}  # tokens per choice index
    try:
        async for output in stream:
            if not prompt_counted and output.prompt_token_ids is not None:
                call.prompt_tokens += len(output.prompt_token_ids)
                prompt_counted = True
            _count_completions(output, generated, delta, call)
            yield output
    finally:
        call.completion_tokens += sum(generated.values())
        await stream.aclose()  # type: ignore[attr-defined]


def _count_completions(output: Any, generated: dict[int, int], delta: bool, call: Call) -> None:
    completions = getattr(output, "outputs", None)
    if not isinstance(completions, list):  # a pooling output: no generated tokens
        return
    for completion in completions:
        token_ids = completion.token_ids
        if token_ids:
            call.first_token()
        index = completion.index
        generated[index] = generated.get(index, 0) + len(token_ids) if delta else len(token_ids)
