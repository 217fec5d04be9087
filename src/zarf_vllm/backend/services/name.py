"""`name.NameService`: the model's served name."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from zarf_vllm.backend.calls import CallTracker
from zarf_vllm.backend.proto.name import name_pb2, name_pb2_grpc


class NameService(name_pb2_grpc.NameServiceServicer):
    def __init__(self, served_name: str, calls: CallTracker) -> None:
        self._served_name = served_name
        self._calls = calls

    async def Name(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> name_pb2.NameResponse:
        async with self._calls.track(context, "Name", admit=False):
            return name_pb2.NameResponse(name=self._served_name)
