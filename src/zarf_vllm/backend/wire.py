"""Request bytes that are not the protobuf message a method takes: INVALID_ARGUMENT, said clearly.

gRPC itself answers a request that does not parse with UNKNOWN and the parser's exception class
("Unexpected <class 'google.protobuf.message.DecodeError'>..."), which tells a client neither
that the fault is theirs nor what to do. This interceptor parses the request itself: bytes that
do not parse become a marker, and the method answers INVALID_ARGUMENT before any of our code
runs. Only methods with a single request message are guarded (all of the contract's); gRPC's
own streaming-request services (reflection) keep gRPC's answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from zarf_vllm.backend.logs import get_logger, log_event

logger = get_logger("wire")


@dataclass(frozen=True)
class Malformed:
    """Stands in for a request whose bytes did not parse."""

    method: str
    error: str

    def refusal(self) -> str:
        return (
            f"the request to {self.method} is not a valid protobuf message ({self.error}); "
            "send the method's request message, serialized"
        )


def _parse_or_mark(deserializer: Callable[[bytes], Any], method: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return Malformed(method, str(exc))

    return parse


async def _refuse(request: Malformed, context: grpc.aio.ServicerContext) -> None:
    log_event(logger, "malformed request refused", method=request.method, error=request.error)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.refusal())


def _guard_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await _refuse(request, context)
        return await behavior(request, context)

    return unary


def _guard_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    # gRPC treats a handler that is not an async generator function as a sync one (it runs it
    # in a thread), so the guard must be one; aclosing passes an early close on to the service
    # at once, which aborts its engine request.
    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, Malformed):
            await _refuse(request, context)
        async with aclosing(behavior(request, context)) as responses:
            async for response in responses:
                yield response

    return stream


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Answers INVALID_ARGUMENT to request bytes that do not parse (see the module doc)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        parse = _parse_or_mark(handler.request_deserializer, method)
        if handler.response_streaming:
            return handler._replace(
                request_deserializer=parse, unary_stream=_guard_stream(handler.unary_stream)
            )
        return handler._replace(
            request_deserializer=parse, unary_unary=_guard_unary(handler.unary_unary)
        )
