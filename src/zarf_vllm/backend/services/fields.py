"""Reading proto3 request messages: optional fields are None unless the client set them."""

from __future__ import annotations

from typing import Any

from zarf_vllm.backend.sampling import SamplingRequest


def optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def sampling_request(
    message: Any, *, max_new_tokens: int | None, frequency_field: str
) -> SamplingRequest:
    """The sampling fields chat and completion requests share (names differ slightly)."""
    return SamplingRequest(
        max_new_tokens=max_new_tokens,
        temperature=optional(message, "temperature"),
        top_k=optional(message, "top_k"),
        top_p=optional(message, "top_p"),
        do_sample=optional(message, "do_sample"),
        n=optional(message, "n"),
        stop=list(message.stop),
        repetition_penalty=optional(message, "repetition_penalty"),
        presence_penalty=optional(message, "presence_penalty"),
        frequency_penalty=optional(message, frequency_field),
        logit_bias=dict(message.logit_bias),
        seed=optional(message, "seed"),
    )
