"""A scripted stand-in for vLLM's `AsyncLLM`, so the serving layer runs in unit tests.

The fake sits *under* `zarf_vllm.backend.engine.Engine`, not in its place: the services get a
real `Engine` built on a `FakeAsyncLLM` (see `make_engine`). That keeps Engine's own logic under
test (aborting a request the caller stopped reading, turning a dead core into EngineDeadError,
submitting embeddings together), and it is the same cut vLLM's serving tests make: they run
their front end against a mocked engine client, the AsyncLLM surface.

What the fake reproduces of vLLM 0.32, because the code under test depends on it:
- outputs are real `vllm.outputs.RequestOutput`/`CompletionOutput` objects (importing them
  costs ~0.1 s once vLLM's SamplingParams, which the code under test needs anyway, is in),
  streamed in DELTA mode through vLLM's own `RequestOutputCollector`, so a consumer that
  reads slower than the engine produces gets merged deltas, exactly as from AsyncLLM;
- a real byte-level BPE tokenizer (built in-process in milliseconds), and incremental
  detokenization that holds back the bytes of an unfinished character: such steps carry a
  token but no text, as vLLM's do;
- `max_tokens` ends a choice with "length", the end-of-sequence token with "stop" (counted as
  a token, with no text), a stop string with "stop" and the text cut before it (vLLM's own
  `check_stop_strings`, with its hold-back of text that may start a stop string);
- n > 1: one output per choice per step, `finished` only on the output that ends the last one;
- a dead engine core fails every stream with vLLM's EngineDeadError and `errored` turns true.

What it deliberately does not do: AsyncLLM aborts a request itself when its stream is closed
early; the fake does not, and keeps such a request unfinished, so a test sees whether Engine
freed the slot (`aborted`, `get_num_unfinished_requests`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from zarf_vllm.backend.engine import Engine, EngineFacts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast
    from vllm import PoolingParams, SamplingParams
    from vllm.outputs import CompletionOutput, PoolingRequestOutput, RequestOutput
    from vllm.v1.engine.output_processor import RequestOutputCollector

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
BOS, EOS = "<s>", "<|end|>"
SPECIAL_TOKENS = [BOS, EOS, "<|user|>", "<|system|>", "<|assistant|>", "<|function|>"]
# A small vocabulary on an ASCII corpus: English words become a few tokens each, and every
# non-ASCII character stays split into its bytes, so multi-byte characters span tokens.
_VOCAB_SIZE = 400
_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Streaming tokens one by one over gRPC to a client that may cancel at any time.",
    "Once upon a time there was a model that answered every question.",
] * 20

EMBEDDING_DIM = 8


@functools.cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer: byte-level BPE, BOS added with special tokens, a chat template.

    Cached: it is not modified by the code under test, and training it twice gives the same
    vocabulary anyway (the trainer is deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    # BOS in front only when the caller asks for special tokens, as Llama-style tokenizers do:
    # the code counts tokens without it and prompts completions with it.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


@dataclass(frozen=True)
class Script:
    """What the fake engine generates for a request.

    texts: each choice's text (choice i gets texts[i % len(texts)]), tokenized by the tokenizer
      and emitted one token per engine step.
    finish: after the text, "stop" emits the end-of-sequence token; "length" repeats the text
      until max_tokens; "abort" ends the choice with vLLM's "abort" finish reason.
    step_s: time per engine step (every unfinished choice gets one token per step).
    stall_after: after this many steps, produce nothing more until aborted (cancellation).
    fail_after / error: after this many steps, fail the stream with `error` (engine alive).
    die_after: after this many steps, the engine core dies (every stream fails).
    """

    texts: Sequence[str] = ("Paris is the capital of France.",)
    finish: Literal["stop", "length", "abort"] = "stop"
    step_s: float = 0.0
    stall_after: int | None = None
    fail_after: int | None = None
    error: Exception = field(default_factory=lambda: RuntimeError("scripted failure"))
    die_after: int | None = None


@dataclass
class FakeRequest:
    """One generate() call as the fake engine saw it."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    steps: int = 0
    # Outputs that carried a token but no text (an unfinished character held back).
    textless_outputs: int = 0
    finished: bool = False
    stalled: asyncio.Event = field(default_factory=asyncio.Event)


class _Choice:
    """One sequence of a request: its tokens so far and the text already sent."""

    def __init__(self, index: int, token_ids: list[int]) -> None:
        self.index = index
        self.script_ids = token_ids
        self.generated: list[int] = []
        self.text = ""  # detokenized, complete characters only, cut at a stop string
        self.sent = 0  # characters of self.text already sent
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None


class FakeAsyncLLM:
    """The part of vLLM's AsyncLLM that `Engine` uses, driven by a `Script`.

    `script` is one Script for every request, or a function of the decoded prompt text.
    """

    def __init__(
        self,
        script: Script | Callable[[str], Script] | None = None,
        tokenizer: PreTrainedTokenizerFast | None = None,
    ) -> None:
        self.script = script or Script()
        self.tokenizer = tokenizer or tiny_tokenizer()
        self.requests: list[FakeRequest] = []
        self.aborted: list[str] = []
        self.encoded: list[list[int]] = []
        self.max_concurrent_encodes = 0
        self.shut_down = False
        self._dead = False
        self._encoding = 0
        self._running: dict[str, tuple[FakeRequest, RequestOutputCollector, asyncio.Task]] = {}

    # -- the AsyncLLM surface -----------------------------------------------------------

    def get_tokenizer(self) -> PreTrainedTokenizerFast:
        return self.tokenizer

    async def generate(
        self, prompt: dict[str, Any], params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError
        from vllm.v1.engine.output_processor import RequestOutputCollector

        if self._dead:
            raise EngineDeadError()
        if params.output_kind is not RequestOutputKind.DELTA:
            # The fake streams deltas only; a caller asking for anything else must fail loudly.
            raise AssertionError(f"the fake engine streams DELTA outputs, got {params.output_kind}")
        request = FakeRequest(request_id, list(prompt["prompt_token_ids"]), params)
        self.requests.append(request)
        collector = RequestOutputCollector(params.output_kind, request_id)
        script = self.script
        if callable(script):
            script = script(self._decode(request.prompt_ids))
        task = asyncio.create_task(self._produce(request, collector, script))
        self._running[request_id] = (request, collector, task)
        try:
            while True:
                output = collector.get_nowait() or await collector.get()
                if output.finished:
                    request.finished = True
                    self._running.pop(request_id, None)
                yield output
                if output.finished:
                    return
        finally:
            # Stop producing, but leave the request in the engine: freeing it is abort()'s job.
            task.cancel()

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        running = self._running.pop(request_id, None)
        if running is not None:
            running[2].cancel()

    async def encode(
        self, prompt: dict[str, Any], pooling_params: PoolingParams, request_id: str
    ) -> AsyncIterator[PoolingRequestOutput]:
        import torch
        from vllm.outputs import PoolingOutput, PoolingRequestOutput
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._dead:
            raise EngineDeadError()
        ids = list(prompt["prompt_token_ids"])
        self.encoded.append(ids)
        self._encoding += 1
        self.max_concurrent_encodes = max(self.max_concurrent_encodes, self._encoding)
        try:
            await asyncio.sleep(0)  # let the other inputs of a batch arrive, as the engine would
        finally:
            self._encoding -= 1
        yield PoolingRequestOutput(
            request_id=request_id,
            outputs=PoolingOutput(data=torch.tensor(embedding_of(ids))),
            prompt_token_ids=ids,
            num_cached_tokens=0,
            finished=True,
        )

    @property
    def errored(self) -> bool:
        return self._dead

    async def check_health(self) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._dead:
            raise EngineDeadError()

    def get_num_unfinished_requests(self) -> int:
        return len(self._running)

    def shutdown(self) -> None:
        self.shut_down = True

    # -- test controls ------------------------------------------------------------------

    def die(self) -> None:
        """The engine core dies: every stream in flight fails with EngineDeadError."""
        from vllm.v1.engine.exceptions import EngineDeadError

        self._dead = True
        for _, collector, task in self._running.values():
            collector.put(EngineDeadError())
            task.cancel()

    def request(self, request_id: str) -> FakeRequest:
        return next(r for r in self.requests if r.request_id == request_id)

    # -- the scripted engine ------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    async def _produce(
        self, request: FakeRequest, collector: RequestOutputCollector, script: Script
    ) -> None:
        params = request.params
        texts = list(script.texts)
        choices = [
            _Choice(i, self.tokenizer.encode(texts[i % len(texts)], add_special_tokens=False))
            for i in range(params.n)
        ]
        while True:
            # First a step's time (at least one pass of the event loop), so the consumer has
            # taken the previous output before anything below can replace it.
            await asyncio.sleep(script.step_s)
            if script.stall_after is not None and request.steps >= script.stall_after:
                request.stalled.set()
                await asyncio.Future()  # until aborted or the stream is closed
            if script.die_after is not None and request.steps >= script.die_after:
                self.die()
                return
            if script.fail_after is not None and request.steps >= script.fail_after:
                collector.put(script.error)
                return
            request.steps += 1
            live = [c for c in choices if c.finish_reason is None]
            for choice in live:
                completion = self._step(choice, script, params)
                if completion.token_ids and not completion.text and not completion.finish_reason:
                    request.textless_outputs += 1
                finished = all(c.finish_reason is not None for c in choices)
                collector.put(self._request_output(request, completion, finished))
            if all(c.finish_reason is not None for c in choices):
                return

    def _step(self, choice: _Choice, script: Script, params: SamplingParams) -> CompletionOutput:
        """One token for one choice, with the text it completes, like vLLM's output processor."""
        from vllm.outputs import CompletionOutput
        from vllm.v1.engine.detokenizer import check_stop_strings

        eos_id = self.tokenizer.eos_token_id
        position = len(choice.generated)
        new_ids: list[int] = []
        if position < len(choice.script_ids) or (script.finish == "length" and choice.script_ids):
            new_ids = [choice.script_ids[position % len(choice.script_ids)]]
        elif script.finish == "stop":
            new_ids = [eos_id]
            choice.finish_reason = "stop"
        else:
            choice.finish_reason = "abort"
        choice.generated += new_ids
        max_tokens = params.max_tokens if params.max_tokens is not None else 16
        if choice.finish_reason is None and len(choice.generated) >= max_tokens:
            choice.finish_reason = "length"

        decoded = self._decode([t for t in choice.generated if t != eos_id])
        # An unfinished multi-byte character decodes to U+FFFD: hold it back, as vLLM does.
        if not decoded.endswith("\ufffd"):
            new_chars = len(decoded) - len(choice.text)
            choice.text = decoded
            stop = params.stop if isinstance(params.stop, list) else []
            match = check_stop_strings(choice.text, new_chars, stop, False)
            if match is not None:
                stop_str, offset = match
                if offset != -1:
                    choice.text = choice.text[:offset]
                choice.finish_reason, choice.stop_reason = "stop", stop_str
        # Text that may be the start of a stop string waits until it is not (or the end).
        stop_buffer = max((len(s) for s in params.stop or []), default=1) - 1
        keep = 0 if choice.finish_reason is not None else stop_buffer
        end = max(choice.sent, len(choice.text) - keep)
        delta, choice.sent = choice.text[choice.sent : end], end
        return CompletionOutput(
            index=choice.index,
            text=delta,
            token_ids=new_ids,
            cumulative_logprob=None,
            logprobs=None,
            finish_reason=choice.finish_reason,
            stop_reason=choice.stop_reason,
        )

    @staticmethod
    def _request_output(
        request: FakeRequest, completion: CompletionOutput, finished: bool
    ) -> RequestOutput:
        from vllm.outputs import RequestOutput

        return RequestOutput(
            request_id=request.request_id,
            prompt=None,
            prompt_token_ids=request.prompt_ids,
            prompt_logprobs=None,
            outputs=[completion],
            finished=finished,
        )


def embedding_of(ids: list[int]) -> list[float]:
    """A deterministic vector whose first component is the input's token count, so a test
    can tell which input a vector belongs to."""
    return [float(len(ids))] + [float(sum(ids) % (k + 2)) for k in range(EMBEDDING_DIM - 1)]


def make_engine(
    llm: FakeAsyncLLM,
    *,
    max_model_len: int = 256,
    is_embedding: bool = False,
    per_request_seed: bool = True,
) -> Engine:
    """The backend's real Engine on the fake; `facts` as Engine.start would derive them."""
    facts = EngineFacts(
        max_model_len=max_model_len,
        vocab_size=len(llm.tokenizer),
        is_embedding=is_embedding,
        per_request_seed=per_request_seed,
    )
    return Engine(llm, facts)  # type: ignore[arg-type]
