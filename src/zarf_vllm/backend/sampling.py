"""From a request's fields to vLLM's SamplingParams, refusing what cannot be served.

Every field vLLM can honour is mapped; invalid values raise InvalidRequest naming the field,
which the services turn into INVALID_ARGUMENT. Fields of the contract that vLLM cannot honour
are accepted and ignored, as the LeapfrogAI API sends some of them with default values on
every call (the list and the reasons are in the README): `best_of` (vLLM V1 has none; use n),
`typical_p`, `watermark` (vLLM has neither), `logprobs` (the responses cannot carry them),
`suffix` (no fill-in-the-middle for arbitrary models) and `user` (bookkeeping only).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zarf_vllm.backend.config import SamplingSettings

if TYPE_CHECKING:
    from vllm import SamplingParams


class InvalidRequest(ValueError):
    """A request field with a value that cannot be served; the message names the field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name


@dataclass
class SamplingRequest:
    """The sampling fields shared by chat and completion requests, None where unset."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: float | None = None
    top_p: float | None = None
    do_sample: bool | None = None
    n: int | None = None
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, int] = field(default_factory=dict)
    seed: int | None = None


@dataclass(frozen=True)
class Limits:
    """What the loaded model and the configuration allow."""

    max_model_len: int
    vocab_size: int
    max_n: int
    max_stop_sequences: int
    per_request_seed: bool = True


def _finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise InvalidRequest(name, f"must be a finite number, got {value}")


def _check_range(name: str, value: float | None, low: float, high: float, why: str) -> None:
    _finite(name, value)
    if value is not None and not low <= value <= high:
        raise InvalidRequest(name, f"{why}, got {value:g}")


def resolve_max_tokens(
    requested: int | None, default: int, prompt_tokens: int, limits: Limits
) -> int:
    """The number of tokens to generate: the request's or the default, clamped to the context.

    0 means "unset", like None: chat's max_new_tokens is a plain proto3 int32, where unset and
    0 are the same on the wire, and the LeapfrogAI API sends 0 for `"max_tokens": null` (in
    completions too), so 0 takes the configured default. Asking for no tokens at all is not a
    request anyone can mean.
    """
    if requested is not None and requested < 0:
        raise InvalidRequest(
            "max_new_tokens",
            f"must be a positive number of tokens (or 0 for the default), got {requested}",
        )
    room = limits.max_model_len - prompt_tokens
    if room <= 0:
        raise InvalidRequest(
            "prompt",
            f"the prompt is {prompt_tokens} tokens but the model's context holds "
            f"{limits.max_model_len}; shorten it (or use `truncate`)",
        )
    return min(requested or default, room)


def _top_k(value: float | None) -> int | None:
    """top_k arrives as a float in chat requests; it must still be a whole number."""
    if value is None:
        return None
    _finite("top_k", value)
    if value != int(value):
        raise InvalidRequest("top_k", f"must be a whole number, got {value:g}")
    if value < -1:
        raise InvalidRequest("top_k", f"must be -1 or 0 (disabled) or positive, got {value:g}")
    return int(value)


def _logit_bias(bias: dict[str, int], vocab_size: int) -> dict[int, float] | None:
    if not bias:
        return None
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token_id = int(key)
        except ValueError:
            raise InvalidRequest("logit_bias", f"keys are token ids, got {key!r}") from None
        if not 0 <= token_id < vocab_size:
            raise InvalidRequest(
                "logit_bias", f"token id {token_id} is outside the vocabulary (0..{vocab_size - 1})"
            )
        if not -100 <= value <= 100:
            raise InvalidRequest("logit_bias", f"biases lie in [-100, 100], got {value} for {key}")
        parsed[token_id] = float(value)
    return parsed


def _stop(stop: list[str], extra_stop: list[str], limits: Limits) -> list[str] | None:
    if len(stop) > limits.max_stop_sequences:
        raise InvalidRequest(
            "stop", f"at most {limits.max_stop_sequences} sequences, got {len(stop)}"
        )
    if any(not s for s in stop):
        raise InvalidRequest("stop", "stop sequences must not be empty strings")
    merged = list(dict.fromkeys([*stop, *extra_stop]))
    return merged or None


@functools.cache
def _vllm_types() -> tuple[Any, Any, Any]:
    """vLLM's classes, imported on first use (the CLI must not import vLLM) and then kept:
    `from vllm import X` goes through vLLM's lazy module __getattr__ on every call."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams, RequestOutputKind, VLLMClientError


def build_sampling_params(
    request: SamplingRequest,
    *,
    prompt_tokens: int,
    defaults: SamplingSettings,
    limits: Limits,
    extra_stop: list[str] | None = None,
) -> SamplingParams:
    """Validates the request and returns vLLM SamplingParams streaming delta outputs."""
    SamplingParams, RequestOutputKind, VLLMClientError = _vllm_types()
    temperature = request.temperature if request.temperature is not None else defaults.temperature
    _check_range("temperature", request.temperature, 0, 2, "must lie in [0, 2]")
    if request.top_p is not None:
        _finite("top_p", request.top_p)
        if not 0 < request.top_p <= 1:
            raise InvalidRequest("top_p", f"must lie in (0, 1], got {request.top_p:g}")
    n = request.n if request.n is not None else 1
    if not 1 <= n <= limits.max_n:
        raise InvalidRequest("n", f"must lie in [1, {limits.max_n}], got {n}")
    if request.repetition_penalty is not None:
        _finite("repetition_penalty", request.repetition_penalty)
        if request.repetition_penalty <= 0:
            raise InvalidRequest(
                "repetition_penalty", f"must be > 0, got {request.repetition_penalty:g}"
            )
    _check_range("presence_penalty", request.presence_penalty, -2, 2, "must lie in [-2, 2]")
    _check_range("frequency_penalty", request.frequency_penalty, -2, 2, "must lie in [-2, 2]")
    top_k = _top_k(request.top_k)
    if request.seed is not None and not limits.per_request_seed:
        raise InvalidRequest(
            "seed",
            "the CPU engine cannot honour per-request seeds (vLLM-CPU fails on seeded sampling "
            "when a prompt is prefilled in chunks); leave seed unset",
        )

    if request.do_sample is False:
        temperature = 0.0  # an explicit "no sampling" means greedy decoding
    if n > 1 and temperature == 0:
        raise InvalidRequest(
            "n", f"greedy decoding (temperature 0 or do_sample false) gives one choice, got n={n}"
        )
    max_tokens = resolve_max_tokens(
        request.max_new_tokens, defaults.max_new_tokens, prompt_tokens, limits
    )

    options: dict[str, object] = {
        "n": n,
        "max_tokens": max_tokens,
        "stop": _stop(request.stop, extra_stop or [], limits),
        "logit_bias": _logit_bias(request.logit_bias, limits.vocab_size),
        "seed": request.seed,
        "output_kind": RequestOutputKind.DELTA,
        "temperature": temperature,
        "top_p": request.top_p if request.top_p is not None else defaults.top_p,
        "top_k": top_k if top_k is not None else defaults.top_k,
        "repetition_penalty": request.repetition_penalty
        if request.repetition_penalty is not None
        else defaults.repetition_penalty,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
    }
    try:
        return SamplingParams(**{k: v for k, v in options.items() if v is not None})
    # vLLM's own checks, for whatever the checks above did not foresee.
    except (ValueError, TypeError, VLLMClientError) as exc:
        raise InvalidRequest("sampling", str(exc)) from exc
