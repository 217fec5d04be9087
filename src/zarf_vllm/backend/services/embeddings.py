"""`embeddings.EmbeddingsService`, served instead of generation for embedding models."""

from __future__ import annotations

import grpc

from zarf_vllm.backend.calls import CallTracker
from zarf_vllm.backend.proto.embeddings import embeddings_pb2, embeddings_pb2_grpc
from zarf_vllm.backend.runtime import Runtime
from zarf_vllm.backend.sampling import InvalidRequest


class EmbeddingsService(embeddings_pb2_grpc.EmbeddingsServiceServicer):
    def __init__(self, runtime: Runtime, calls: CallTracker, max_inputs: int) -> None:
        self._runtime = runtime
        self._calls = calls
        self._max_inputs = max_inputs

    async def CreateEmbedding(
        self, request: embeddings_pb2.EmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> embeddings_pb2.EmbeddingResponse:
        async with self._calls.track(context, "CreateEmbedding") as call:
            inputs = list(request.inputs)
            if not inputs:
                raise InvalidRequest("inputs", "must hold at least one string")
            if len(inputs) > self._max_inputs:
                raise InvalidRequest(
                    "inputs", f"at most {self._max_inputs} strings per call, got {len(inputs)}"
                )
            engine = self._runtime.require_engine()
            max_len = engine.facts.max_model_len
            tokenized = []
            for position, text in enumerate(inputs):
                ids = await engine.tokenize(text, add_special_tokens=True)
                if len(ids) > max_len:
                    raise InvalidRequest(
                        "inputs",
                        f"input {position} is {len(ids)} tokens; the model takes at most {max_len}",
                    )
                tokenized.append(ids)
            call.prompt_tokens = sum(len(ids) for ids in tokenized)
            vectors = await engine.embed(tokenized)
            call.first_token()
            return embeddings_pb2.EmbeddingResponse(
                embeddings=[embeddings_pb2.Embedding(embedding=v) for v in vectors]
            )
