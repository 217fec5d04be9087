"""Every RPC runs inside one `CallTracker.track()`: admission, status codes, metrics, logs.
The OpenAI HTTP API goes through the same tracker (`refusal`, `enter`, `leave`), so both APIs
share one cap on calls in flight, one drain and one log line per call.

Admission is decided before any work: while draining, new calls get UNAVAILABLE; past the
cap on calls in flight, RESOURCE_EXHAUSTED at once (queueing would only hide the overload
from the client and the load balancer). Expected failures map to their gRPC codes here, in
one place, so the services only raise.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc

from zarf_vllm.backend.engine import EngineDeadError
from zarf_vllm.backend.logs import get_logger, log_event
from zarf_vllm.backend.metrics import Metrics
from zarf_vllm.backend.sampling import InvalidRequest

logger = get_logger("calls")


@dataclass
class Call:
    """What one call did, filled in by the service as it goes, then logged and counted."""

    method: str
    request_id: str
    api: str = "grpc"  # or "openai": the metrics' and logs' `api`
    http_status: int | None = None  # what an HTTP call answered, logged next to the code
    started: float = field(default_factory=time.perf_counter)
    created: int = field(default_factory=lambda: int(time.time()))  # Unix time, for responses
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    prompt_text: str | None = None

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()


class CallTracker:
    def __init__(self, metrics: Metrics, max_in_flight: int, log_prompts: bool) -> None:
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._log_prompts = log_prompts
        self.in_flight = 0
        self.accepting = False  # until the model is loaded and warmed up
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.engine_died = asyncio.Event()

    async def wait_idle(self) -> None:
        """Returns once no call is in flight."""
        await self._idle.wait()

    @asynccontextmanager
    async def track(
        self, context: grpc.aio.ServicerContext, method: str, *, admit: bool = True
    ) -> AsyncIterator[Call]:
        """Runs one call; `admit=False` for cheap calls that bypass the in-flight cap."""
        call = Call(method=method, request_id=uuid.uuid4().hex)
        refused = self.refusal(admit=admit)
        if refused is not None:
            self._count(call, refused[0])
            await context.abort(*refused)
        self._enter(call)
        code, message = grpc.StatusCode.OK, ""
        try:
            yield call
        except InvalidRequest as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except EngineDeadError as exc:
            self.engine_died.set()
            code, message = grpc.StatusCode.UNAVAILABLE, f"the engine has stopped: {exc}"
        except (asyncio.CancelledError, GeneratorExit):
            # A client that cancels or goes away: the task is cancelled, or for a stream
            # gRPC closes the response generator.
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            if _is_engine_dead(exc):
                self.engine_died.set()
                code, message = grpc.StatusCode.UNAVAILABLE, "the engine has stopped"
            else:
                logger.exception("call %s failed", call.request_id)
                code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
        finally:
            self._leave(call, code)
        if code is not grpc.StatusCode.OK:
            await context.abort(code, message)

    def refusal(self, *, admit: bool = True) -> tuple[grpc.StatusCode, str] | None:
        """Why a new call is refused now (code and message), or None when it may start."""
        if not self.accepting and not self.draining:
            return grpc.StatusCode.UNAVAILABLE, "the model is still loading"
        if self.draining:
            return grpc.StatusCode.UNAVAILABLE, "the server is shutting down"
        if admit and self.in_flight >= self._max_in_flight:
            return (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self._max_in_flight} calls in flight; "
                "retry with backoff",
            )
        return None

    def refuse(self, call: Call, code: grpc.StatusCode) -> None:
        """Counts and logs a call refused before it started (for front ends other than gRPC)."""
        self._count(call, code)

    def enter(self, call: Call) -> None:
        """A call admitted by a front end other than gRPC starts; `leave` must follow."""
        self._enter(call)

    def leave(self, call: Call, code: grpc.StatusCode) -> None:
        self._leave(call, code)

    def _enter(self, call: Call) -> None:
        self.in_flight += 1
        self._idle.clear()
        self._metrics.in_flight.labels(call.api).inc()

    def _leave(self, call: Call, code: grpc.StatusCode) -> None:
        self.in_flight -= 1
        self._metrics.in_flight.labels(call.api).dec()
        if self.in_flight == 0:
            self._idle.set()
        self._count(call, code)

    def _count(self, call: Call, code: grpc.StatusCode) -> None:
        ended = time.perf_counter()
        metrics = self._metrics
        api, method = call.api, call.method
        metrics.requests.labels(api, method, code.name).inc()
        metrics.duration.labels(api, method).observe(ended - call.started)
        ttft_ms = None
        if call.first_token_at is not None:
            metrics.time_to_first_token.labels(api, method).observe(
                call.first_token_at - call.started
            )
            ttft_ms = round((call.first_token_at - call.started) * 1000, 2)
        if call.prompt_tokens:
            metrics.prompt_tokens.labels(api, method).inc(call.prompt_tokens)
        if call.completion_tokens:
            metrics.completion_tokens.labels(api, method).inc(call.completion_tokens)
        fields: dict[str, object] = {
            "id": call.request_id,
            "api": api,
            "method": method,
            "status": code.name,
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "ttft_ms": ttft_ms,
            "duration_ms": round((ended - call.started) * 1000, 2),
        }
        if call.http_status is not None:
            fields["http_status"] = call.http_status
        if self._log_prompts and call.prompt_text is not None:
            fields["prompt"] = call.prompt_text
        log_event(logger, "request", logging.INFO, **fields)


def _is_engine_dead(exc: BaseException) -> bool:
    from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

    return isinstance(exc, VllmEngineDeadError) or isinstance(exc.__cause__, VllmEngineDeadError)
