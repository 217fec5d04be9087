"""`completion.CompletionService` and `completion.CompletionStreamService`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from zarf_vllm.backend.calls import Call, CallTracker
from zarf_vllm.backend.generation import Delta, Prepared
from zarf_vllm.backend.proto.completion import completion_pb2, completion_pb2_grpc
from zarf_vllm.backend.runtime import Runtime
from zarf_vllm.backend.services.fields import optional, sampling_request

FINISH_REASONS = {
    None: completion_pb2.NONE,
    "stop": completion_pb2.STOP,
    "length": completion_pb2.LENGTH,
}


class CompletionService(
    completion_pb2_grpc.CompletionServiceServicer,
    completion_pb2_grpc.CompletionStreamServiceServicer,
):
    def __init__(self, runtime: Runtime, calls: CallTracker) -> None:
        self._runtime = runtime
        self._calls = calls

    async def _prepare(self, request: completion_pb2.CompletionRequest, call: Call) -> Prepared:
        call.prompt_text = request.prompt
        return await self._runtime.require_generator().prepare(
            request.prompt,
            sampling_request(
                request,
                # Optional here, but an explicit 0 means the default as in chat: the LeapfrogAI
                # API sends 0 for `"max_tokens": null` (resolve_max_tokens).
                max_new_tokens=optional(request, "max_new_tokens"),
                frequency_field="frequence_penalty",
            ),
            add_special_tokens=True,
            truncate=optional(request, "truncate"),
        )

    async def Complete(
        self, request: completion_pb2.CompletionRequest, context: grpc.aio.ServicerContext
    ) -> completion_pb2.CompletionResponse:
        async with self._calls.track(context, "Complete") as call:
            prepared = await self._prepare(request, call)
            results = await self._runtime.require_generator().complete(prepared, call)
            prefix = _echo_prefix(request)
            choices = [
                completion_pb2.CompletionChoice(
                    text=prefix + text, index=index, finish_reason=FINISH_REASONS[reason]
                )
                for index, (text, reason) in sorted(results.items())
            ]
            return completion_pb2.CompletionResponse(choices=choices, usage=_usage(call))

    async def CompleteStream(
        self, request: completion_pb2.CompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[completion_pb2.CompletionResponse]:
        async with self._calls.track(context, "CompleteStream") as call:
            prepared = await self._prepare(request, call)
            prefix = _echo_prefix(request)
            echoed: set[int] = set()
            async for deltas, last in self._runtime.require_generator().stream(prepared, call):
                choices = [_stream_choice(d, prefix, echoed) for d in deltas]
                response = completion_pb2.CompletionResponse(choices=choices)
                if last:
                    response.usage.CopyFrom(_usage(call))
                yield response


def _echo_prefix(request: completion_pb2.CompletionRequest) -> str:
    """echo / return_full_text: the prompt comes back in front of the generated text."""
    wanted = optional(request, "echo") or optional(request, "return_full_text")
    return request.prompt if wanted else ""


def _stream_choice(delta: Delta, prefix: str, echoed: set[int]) -> completion_pb2.CompletionChoice:
    text = delta.text
    if prefix and delta.index not in echoed:
        echoed.add(delta.index)
        text = prefix + text
    return completion_pb2.CompletionChoice(
        text=text, index=delta.index, finish_reason=FINISH_REASONS[delta.finish_reason]
    )


def _usage(call: Call) -> completion_pb2.CompletionUsage:
    return completion_pb2.CompletionUsage(
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        total_tokens=call.prompt_tokens + call.completion_tokens,
    )
