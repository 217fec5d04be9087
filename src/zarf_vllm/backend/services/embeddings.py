"""`embeddings.EmbeddingsService`, served instead of generation for embedding models."""

from __future__ import annotations

from typing import Literal

import grpc

from zarf_vllm.backend.calls import Call, CallTracker
from zarf_vllm.backend.logs import get_logger, log_event
from zarf_vllm.backend.proto.embeddings import embeddings_pb2, embeddings_pb2_grpc
from zarf_vllm.backend.runtime import Runtime
from zarf_vllm.backend.sampling import InvalidRequest

logger = get_logger("embeddings")


class EmbeddingsService(embeddings_pb2_grpc.EmbeddingsServiceServicer):
    def __init__(
        self,
        runtime: Runtime,
        calls: CallTracker,
        max_inputs: int,
        overflow: Literal["truncate", "refuse"],
    ) -> None:
        """`max_inputs` and `overflow`: the settings' limits.max_embedding_inputs and
        limits.embedding_overflow."""
        self._runtime = runtime
        self._calls = calls
        self._max_inputs = max_inputs
        self._overflow = overflow

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
            tokenized = await self._tokenize(inputs, call)
            call.prompt_tokens = sum(len(ids) for ids in tokenized)
            vectors = await self._runtime.require_engine().embed(tokenized)
            call.first_token()
            return embeddings_pb2.EmbeddingResponse(
                embeddings=[embeddings_pb2.Embedding(embedding=v) for v in vectors]
            )

    async def _tokenize(self, inputs: list[str], call: Call) -> list[list[int]]:
        """Every input's token ids; those over the model's limit truncated, or refused."""
        engine = self._runtime.require_engine()
        limit = engine.facts.max_model_len
        tokenized = await engine.tokenize_inputs(inputs)
        over = [position for position, ids in enumerate(tokenized) if len(ids) > limit]
        if not over:
            return tokenized
        if self._overflow == "refuse":
            first = over[0]
            raise InvalidRequest(
                "inputs",
                f"input {first} is {len(tokenized[first])} tokens; the model takes at most "
                f"{limit} (limits.embedding_overflow is refuse; split the text)",
            )
        # Re-tokenized with the tokenizer's own truncation rather than sliced here, so the
        # special tokens at the end ([SEP]) stay; only the few long inputs pay twice.
        longest = max(len(tokenized[p]) for p in over)
        cut = await engine.tokenize_inputs([inputs[p] for p in over], max_tokens=limit)
        for position, ids in zip(over, cut, strict=True):
            tokenized[position] = ids
        # Operators should be able to see that text went unembedded (chunks too long for the
        # model make poor retrieval), without reading every request's token counts.
        log_event(
            logger,
            "embedding inputs truncated",
            id=call.request_id,
            truncated=len(over),
            inputs=len(inputs),
            longest_tokens=longest,
            max_tokens=limit,
        )
        return tokenized
