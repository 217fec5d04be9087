"""generation.Generator and engine.Engine on the scripted fake engine (no model, no vLLM core).

What the real engine adds on top is covered by tests/engine; here every rule of the streaming
contract that our code enforces is checked fast: empty outputs dropped, one last flag, token
accounting, the stream interval, the request's fate when the caller stops or the engine dies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import pytest

from support.fake_engine import EMBEDDING_DIM, FakeAsyncLLM, Script, make_engine, tiny_tokenizer
from zarf_vllm.backend.calls import Call
from zarf_vllm.backend.config import SamplingSettings
from zarf_vllm.backend.engine import EngineDeadError
from zarf_vllm.backend.generation import Delta, Generator, Prepared
from zarf_vllm.backend.sampling import InvalidRequest, Limits, SamplingRequest

MAX_MODEL_LEN = 64
DEFAULTS = SamplingSettings(max_new_tokens=32)
LIMITS = Limits(max_model_len=MAX_MODEL_LEN, vocab_size=400, max_n=4, max_stop_sequences=4)
# Multi-byte characters span several byte tokens in the fake's tokenizer, so some engine
# outputs carry a token but no text yet.
UNICODE_TEXT = "Zürich, 東京 and 🚀 are here."


def tokens(text: str) -> list[int]:
    return tiny_tokenizer().encode(text, add_special_tokens=False)


def generator(
    script: Script | None = None,
    *,
    stream_interval_s: float = 0.0,
    extra_stop: Sequence[str] = (),
) -> tuple[Generator, FakeAsyncLLM]:
    fake = FakeAsyncLLM(script or Script())
    engine = make_engine(fake, max_model_len=MAX_MODEL_LEN)
    return Generator(engine, DEFAULTS, LIMITS, list(extra_stop), stream_interval_s), fake


async def prepare(gen: Generator, prompt: str = "Hello there", **fields) -> Prepared:
    truncate = fields.pop("truncate", None)
    return await gen.prepare(
        prompt, SamplingRequest(**fields), add_special_tokens=True, truncate=truncate
    )


async def collect(gen: Generator, prepared: Prepared, call: Call) -> list[tuple[list[Delta], bool]]:
    return [item async for item in gen.stream(prepared, call)]


def new_call() -> Call:
    return Call(method="test", request_id=f"req-{time.perf_counter_ns()}")


async def eventually(predicate: Callable[[], object], seconds: float = 2.0) -> None:
    """Polls: the state watched belongs to the code under test, which offers no event."""
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


# -- prepare ------------------------------------------------------------------------------


async def test_prepare_tokenizes_with_or_without_special_tokens() -> None:
    gen, _ = generator()
    tokenizer = tiny_tokenizer()
    with_bos = await gen.prepare("Hello", SamplingRequest(), add_special_tokens=True, truncate=None)
    without = await gen.prepare("Hello", SamplingRequest(), add_special_tokens=False, truncate=None)
    assert with_bos.prompt_ids == [tokenizer.bos_token_id, *without.prompt_ids]
    assert without.prompt_ids == tokens("Hello")


async def test_truncate_keeps_the_end_of_the_prompt() -> None:
    gen, _ = generator()
    prompt = "The capital of France is Paris. " * 5
    prepared = await prepare(gen, prompt, truncate=7)
    assert prepared.prompt_ids == tiny_tokenizer().encode(prompt)[-7:]
    with pytest.raises(InvalidRequest) as caught:
        await prepare(gen, prompt, truncate=0)
    assert caught.value.field == "truncate"


async def test_an_empty_prompt_is_refused() -> None:
    gen, _ = generator()
    with pytest.raises(InvalidRequest) as caught:
        await gen.prepare("", SamplingRequest(), add_special_tokens=False, truncate=None)
    assert caught.value.field == "prompt"


async def test_max_new_tokens_is_clamped_to_the_room_left_in_the_context() -> None:
    gen, fake = generator(Script(finish="length"))
    prepared = await prepare(gen, max_new_tokens=5000)
    room = MAX_MODEL_LEN - len(prepared.prompt_ids)
    assert prepared.params.max_tokens == room
    call = new_call()
    result = await gen.complete(prepared, call)
    assert result[0][1] == "length"
    assert call.completion_tokens == room
    assert fake.requests[0].params.max_tokens == room


async def test_request_stop_strings_come_first_then_the_models() -> None:
    gen, _ = generator(extra_stop=["<|end|>", "###"])
    prepared = await prepare(gen, stop=["###", "capital"])
    assert prepared.params.stop == ["###", "capital", "<|end|>"]


# -- stream -------------------------------------------------------------------------------


async def test_stream_drops_outputs_without_text_and_flags_only_the_last() -> None:
    gen, fake = generator(Script(texts=(UNICODE_TEXT,)))
    call = new_call()
    prepared = await prepare(gen)
    items = await collect(gen, prepared, call)

    assert fake.requests[0].textless_outputs > 0  # the engine did send outputs without text
    *body, (last_deltas, last_flag) = items
    assert last_flag and not any(flag for _, flag in body)
    for deltas, _ in body:
        [delta] = deltas
        assert delta.text and delta.finish_reason is None
    assert [(d.index, d.finish_reason) for d in last_deltas] == [(0, "stop")]
    assert "".join(d.text for deltas, _ in items for d in deltas) == UNICODE_TEXT
    # Every token counts, those without text and the end-of-sequence token included.
    assert call.completion_tokens == len(tokens(UNICODE_TEXT)) + 1
    assert call.prompt_tokens == len(prepared.prompt_ids)
    assert call.first_token_at is not None


async def test_several_choices_each_end_once_and_only_the_last_output_is_last() -> None:
    texts = ("alpha beta", "The capital of Italy is Rome.", "gamma")
    gen, _ = generator(Script(texts=texts))
    call = new_call()
    items = await collect(gen, await prepare(gen, n=3, temperature=1.0), call)

    by_index: dict[int, list[Delta]] = {}
    for deltas, _ in items:
        for delta in deltas:
            by_index.setdefault(delta.index, []).append(delta)
    assert sorted(by_index) == [0, 1, 2]
    for index, deltas in by_index.items():
        assert "".join(d.text for d in deltas) == texts[index]
        assert [d.finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["stop"]
    assert [flag for _, flag in items].count(True) == 1 and items[-1][1]
    # The choice with the most tokens ends last (on a tie, the higher index: choices step in
    # order), and the output that ends it is the last.
    longest = max(range(len(texts)), key=lambda i: (len(tokens(texts[i])), i))
    assert [d.index for d in items[-1][0]] == [longest]
    assert call.completion_tokens == sum(len(tokens(t)) + 1 for t in texts)


async def test_stop_string_ends_the_choice_before_it() -> None:
    gen, _ = generator(Script(texts=("Paris is the capital of France.",), finish="length"))
    result = await gen.complete(await prepare(gen, stop=["capital"]), new_call())
    assert result == {0: ("Paris is the ", "stop")}


async def test_complete_joins_the_deltas_of_each_choice() -> None:
    texts = ("one two three", "four")
    gen, _ = generator(Script(texts=texts))
    result = await gen.complete(await prepare(gen, n=2, temperature=0.5), new_call())
    assert result == {0: (texts[0], "stop"), 1: (texts[1], "stop")}


async def test_stream_interval_merges_fast_tokens_into_fewer_chunks() -> None:
    text = "Once upon a time there was a model that answered every question. " * 2
    script = Script(texts=(text,), finish="length", step_s=0.002)
    unthrottled, _ = generator(script)
    throttled, _ = generator(script, stream_interval_s=0.05)

    every = await collect(unthrottled, await prepare(unthrottled, max_new_tokens=40), new_call())
    merged = await collect(throttled, await prepare(throttled, max_new_tokens=40), new_call())

    def joined(items: list[tuple[list[Delta], bool]]) -> str:
        return "".join(d.text for deltas, _ in items for d in deltas)

    assert joined(merged) == joined(every)
    assert len(every) == 40  # one chunk per token without an interval
    assert len(merged) <= 10  # 80 ms or more of tokens, in chunks at least 50 ms apart
    # The first token is never held back: the first chunk is exactly the first token's text.
    assert merged[0][0][0].text == every[0][0][0].text
    assert merged[-1][1] and merged[-1][0][-1].finish_reason == "length"


async def test_stream_interval_does_not_delay_a_slow_stream() -> None:
    # Tokens 30 ms apart, interval 5 ms: each token goes out alone, as soon as it is there.
    gen, _ = generator(Script(texts=("The capital",), step_s=0.03), stream_interval_s=0.005)
    items = await collect(gen, await prepare(gen), new_call())
    assert len(items) == len(tokens("The capital")) + 1  # and the end-of-sequence output


async def test_complete_never_waits_for_the_stream_interval() -> None:
    gen, _ = generator(Script(texts=("The capital of France is Paris.",)), stream_interval_s=1.0)
    started = time.monotonic()
    await gen.complete(await prepare(gen), new_call())
    assert time.monotonic() - started < 0.5  # 10 tokens would take 9 s at one per interval


# -- when things go wrong -----------------------------------------------------------------


async def test_a_caller_that_stops_reading_aborts_the_engine_request() -> None:
    gen, fake = generator(Script(finish="length"))
    call = new_call()
    stream = gen.stream(await prepare(gen, max_new_tokens=30), call)
    async for _ in stream:
        break
    assert fake.get_num_unfinished_requests() == 1
    await stream.aclose()
    assert fake.aborted == [call.request_id]
    assert fake.get_num_unfinished_requests() == 0


async def test_a_cancelled_call_aborts_the_engine_request() -> None:
    gen, fake = generator(Script(stall_after=2))
    call = new_call()
    prepared = await prepare(gen)
    task = asyncio.create_task(gen.complete(prepared, call))
    await eventually(lambda: fake.requests and fake.requests[0].stalled.is_set())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.aborted == [call.request_id]
    assert fake.get_num_unfinished_requests() == 0


async def test_a_finished_request_is_not_aborted() -> None:
    gen, fake = generator()
    await gen.complete(await prepare(gen), new_call())
    assert fake.aborted == [] and fake.get_num_unfinished_requests() == 0


async def test_engine_death_mid_stream_raises_engine_dead_error() -> None:
    gen, fake = generator(Script(finish="length", die_after=3))
    received = []
    with pytest.raises(EngineDeadError):
        async for item in gen.stream(await prepare(gen), new_call()):
            received.append(item)
    assert len(received) == 3
    assert fake.errored


async def test_an_engine_error_with_the_engine_alive_passes_through_and_frees_the_slot() -> None:
    gen, fake = generator(Script(finish="length", fail_after=2, error=ValueError("bad step")))
    call = new_call()
    with pytest.raises(ValueError, match="bad step"):
        await gen.complete(await prepare(gen), call)
    assert not fake.errored
    assert fake.aborted == [call.request_id]


async def test_an_aborted_finish_is_an_error_not_a_short_answer() -> None:
    gen, _ = generator(Script(texts=("cut short",), finish="abort"))
    with pytest.raises(RuntimeError, match="aborted"):
        await gen.complete(await prepare(gen), new_call())


# -- the engine's other operations --------------------------------------------------------


async def test_check_health_turns_a_dead_core_into_engine_dead_error() -> None:
    fake = FakeAsyncLLM()
    engine = make_engine(fake)
    await engine.check_health()
    assert not engine.dead
    fake.die()
    assert engine.dead
    with pytest.raises(EngineDeadError):
        await engine.check_health()


async def test_long_texts_tokenize_off_the_loop_with_the_same_result() -> None:
    engine = make_engine(FakeAsyncLLM())
    text = "The capital of France is Paris. " * 200  # past the inline limit of 4096 chars
    assert len(text) > 4096
    ids = await engine.tokenize(text, add_special_tokens=False)
    assert ids == tokens(text)


async def test_embed_submits_every_input_together_and_keeps_their_order() -> None:
    fake = FakeAsyncLLM()
    engine = make_engine(fake, is_embedding=True)
    inputs = [tokens(t) for t in ("a", "The capital of France", "Paris is nice")]
    vectors = await engine.embed(inputs)
    assert [len(v) for v in vectors] == [EMBEDDING_DIM] * 3
    assert [v[0] for v in vectors] == [float(len(ids)) for ids in inputs]
    assert fake.max_concurrent_encodes == 3  # one batch for the engine, not one at a time
