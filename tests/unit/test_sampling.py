"""Request fields to SamplingParams: the mapping and the refusals (pure logic, no engine)."""

from __future__ import annotations

import pytest

from zarf_vllm.backend.config import SamplingSettings
from zarf_vllm.backend.sampling import (
    InvalidRequest,
    Limits,
    SamplingRequest,
    build_sampling_params,
)

LIMITS = Limits(max_model_len=100, vocab_size=50, max_n=4, max_stop_sequences=2)
DEFAULTS = SamplingSettings(max_new_tokens=16, temperature=0.7, top_p=0.9)


def params(prompt_tokens: int = 10, **fields):
    return build_sampling_params(
        SamplingRequest(**fields), prompt_tokens=prompt_tokens, defaults=DEFAULTS, limits=LIMITS
    )


def test_defaults_fill_unset_fields_and_deltas_are_streamed() -> None:
    from vllm.sampling_params import RequestOutputKind

    p = params()
    assert (p.max_tokens, p.temperature, p.top_p, p.n) == (16, 0.7, 0.9, 1)
    assert p.output_kind == RequestOutputKind.DELTA


def test_request_values_win_and_map_onto_vllm() -> None:
    p = params(
        max_new_tokens=5, temperature=0.3, top_k=3.0, top_p=0.5, n=2, stop=["x"],
        repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=-0.5,
        logit_bias={"7": -100}, seed=42,
    )  # fmt: skip
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.n) == (5, 0.3, 3, 0.5, 2)
    assert p.stop == ["x"] and p.seed == 42 and p.logit_bias == {7: -100.0}
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.1, 0.5, -0.5)


def test_do_sample_false_means_greedy() -> None:
    assert params(do_sample=False, temperature=1.2).temperature == 0.0


def test_max_tokens_are_clamped_to_the_room_left_in_the_context() -> None:
    assert params(prompt_tokens=95, max_new_tokens=50).max_tokens == 5
    with pytest.raises(InvalidRequest, match="prompt: the prompt is 100 tokens"):
        params(prompt_tokens=100)


def test_max_new_tokens_0_means_the_default_still_clamped_to_the_context() -> None:
    # The LeapfrogAI API sends 0 for `"max_tokens": null`; chat's proto3 int32 cannot tell 0
    # from unset anyway.
    assert params(max_new_tokens=0).max_tokens == DEFAULTS.max_new_tokens == 16
    assert params(max_new_tokens=0).max_tokens == params(max_new_tokens=None).max_tokens
    assert params(prompt_tokens=90, max_new_tokens=0).max_tokens == 10
    with pytest.raises(InvalidRequest, match="prompt: the prompt is 100 tokens"):
        params(prompt_tokens=100, max_new_tokens=0)


def test_a_negative_max_new_tokens_is_refused_before_anything_else() -> None:
    # Even with a prompt that does not fit: the field the client got wrong is named first.
    with pytest.raises(InvalidRequest, match=r"^max_new_tokens: .*got -5$"):
        params(prompt_tokens=100, max_new_tokens=-5)


def test_extra_stop_strings_are_merged_without_duplicates() -> None:
    p = build_sampling_params(
        SamplingRequest(stop=["a"]), prompt_tokens=1, defaults=DEFAULTS, limits=LIMITS,
        extra_stop=["a", "<|im_end|>"],
    )  # fmt: skip
    assert p.stop == ["a", "<|im_end|>"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 1.5}, "top_k"),
        ({"n": 5}, "n"),
        ({"n": 2, "temperature": 0.0}, "n"),
        ({"stop": ["a", "b", "c"]}, "stop"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"logit_bias": {"50": 1}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
    ],
)
def test_invalid_fields_are_named(fields: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        params(**fields)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
