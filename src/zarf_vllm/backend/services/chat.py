"""`chat.ChatCompletionService` and `chat.ChatCompletionStreamService`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from zarf_vllm.backend.calls import Call, CallTracker
from zarf_vllm.backend.generation import Delta, Prepared
from zarf_vllm.backend.prompts import messages_from_items
from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc
from zarf_vllm.backend.runtime import Runtime
from zarf_vllm.backend.services.fields import optional, sampling_request

FINISH_REASONS = {
    None: chat_pb2.NONE,
    "stop": chat_pb2.STOP,
    "length": chat_pb2.LENGTH,
}


class ChatService(
    chat_pb2_grpc.ChatCompletionServiceServicer, chat_pb2_grpc.ChatCompletionStreamServiceServicer
):
    def __init__(self, runtime: Runtime, calls: CallTracker) -> None:
        self._runtime = runtime
        self._calls = calls

    async def _prepare(self, request: chat_pb2.ChatCompletionRequest, call: Call) -> Prepared:
        prompt = self._runtime.require_prompts().render(messages_from_items(request.chat_items))
        call.prompt_text = prompt
        return await self._runtime.require_generator().prepare(
            prompt,
            # Not optional in the contract, so unset arrives as 0 (and the LeapfrogAI API sends
            # 0 for `"max_tokens": null`): 0 takes the configured default (resolve_max_tokens).
            sampling_request(
                request, max_new_tokens=request.max_new_tokens, frequency_field="frequency_penalty"
            ),
            # The chat template already holds the model's special tokens (BOS and the like).
            add_special_tokens=False,
            truncate=optional(request, "truncate"),
        )

    async def ChatComplete(
        self, request: chat_pb2.ChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.ChatCompletionResponse:
        async with self._calls.track(context, "ChatComplete") as call:
            prepared = await self._prepare(request, call)
            results = await self._runtime.require_generator().complete(prepared, call)
            choices = [
                _choice(index, text, reason) for index, (text, reason) in sorted(results.items())
            ]
            return _response(call, "chat.completion", choices, with_usage=True)

    async def ChatCompleteStream(
        self, request: chat_pb2.ChatCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.ChatCompletionResponse]:
        async with self._calls.track(context, "ChatCompleteStream") as call:
            prepared = await self._prepare(request, call)
            async for deltas, last in self._runtime.require_generator().stream(prepared, call):
                yield _chunk(call, deltas, with_usage=last)


def _choice(index: int, text: str, reason: str | None) -> chat_pb2.ChatCompletionChoice:
    return chat_pb2.ChatCompletionChoice(
        index=index,
        chat_item=chat_pb2.ChatItem(role=chat_pb2.ASSISTANT, content=text),
        finish_reason=FINISH_REASONS[reason],
    )


def _chunk(call: Call, deltas: list[Delta], *, with_usage: bool) -> chat_pb2.ChatCompletionResponse:
    choices = [_choice(d.index, d.text, d.finish_reason) for d in deltas]
    return _response(call, "chat.completion.chunk", choices, with_usage=with_usage)


def _response(
    call: Call, kind: str, choices: list[chat_pb2.ChatCompletionChoice], *, with_usage: bool
) -> chat_pb2.ChatCompletionResponse:
    response = chat_pb2.ChatCompletionResponse(
        id=f"chatcmpl-{call.request_id}", object=kind, created=call.created, choices=choices
    )
    if with_usage:
        response.usage.CopyFrom(
            chat_pb2.Usage(
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                total_tokens=call.prompt_tokens + call.completion_tokens,
            )
        )
    return response
