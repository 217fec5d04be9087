"""`counting.TokenCountService`: how many tokens a text is for this model's tokenizer."""

from __future__ import annotations

import grpc

from zarf_vllm.backend.calls import CallTracker
from zarf_vllm.backend.proto.counting import counting_pb2, counting_pb2_grpc
from zarf_vllm.backend.runtime import Runtime


class TokenCountService(counting_pb2_grpc.TokenCountServiceServicer):
    def __init__(self, runtime: Runtime, calls: CallTracker) -> None:
        self._runtime = runtime
        self._calls = calls

    async def CountTokens(
        self, request: counting_pb2.TokenCountRequest, context: grpc.aio.ServicerContext
    ) -> counting_pb2.TokenCountResponse:
        async with self._calls.track(context, "CountTokens", admit=False) as call:
            # The text's own tokens, without the BOS/EOS a prompt would add.
            ids = await self._runtime.require_engine().tokenize(
                request.text, add_special_tokens=False
            )
            call.prompt_tokens = len(ids)
            return counting_pb2.TokenCountResponse(count=len(ids))
