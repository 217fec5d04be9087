"""A front-end process's side of `server.api_processes` > 1: its engine is a client of an engine
core that the supervisor (frontends.py) started, and the two processes share a few events.

Everything here crosses a process boundary (multiprocessing's spawn pickles it), so it holds
only plain data, vLLM's listening sockets and multiprocessing events.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

# How often a front end looks at an event of the supervisor's while it waits for it: often
# enough not to delay SERVING noticeably, and an asyncio sleep keeps the wait cancellable (a
# thread blocked in Event.wait would keep the process from exiting on a stop while loading).
POLL_S = 0.05


@dataclass
class FrontEndSignals:
    """The events one front end and its supervisor share."""

    listening: Event  # set by the front end once its ports listen
    engine_up: Event  # set by the supervisor once every engine core is ready
    engine_dead: Event  # set by the supervisor when an engine core process exits
    serving: Event  # set by the front end once its engine client is attached and warmed up
    all_serving: Event  # set by the supervisor once every front end has set `serving`


@dataclass
class EngineSource:
    """How front end `index` of `count` reaches the engine core, and tells the supervisor how
    far it got."""

    index: int
    count: int
    engine_args: dict[str, Any]  # AsyncEngineArgs keywords, resolved once by the supervisor
    client_config: dict[str, Any]  # vLLM's client_addresses: this client's ZMQ listeners
    signals: FrontEndSignals

    @property
    def name(self) -> str:
        return f"FrontEnd_{self.index}"

    async def wait_for_engine(self) -> None:
        """Returns once the engine core is up. vLLM's client waits for the engine's first
        message only VLLM_ENGINE_READY_TIMEOUT_S (600 s), less than a big model may take to
        load, so the client is built after the supervisor saw the engine ready."""
        await wait_for(self.signals.engine_up)

    def connect(self) -> AsyncLLM:
        """This front end's AsyncLLM: a client of the running engine core (blocks briefly)."""
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        args = front_end_engine_args(self.engine_args, self.count, self.index)
        # The usage context of AsyncLLM.from_engine_args, which the one-process path calls: it
        # picks vLLM's batch defaults, so every client's config is the engine core's.
        config = args.create_engine_config(usage_context=UsageContext.ENGINE_CONTEXT)
        return AsyncLLM.from_vllm_config(
            config,
            disable_log_stats=args.disable_log_stats,
            client_addresses=dict(self.client_config),
            client_count=self.count,
            client_index=self.index,
        )

    def engine_alive(self) -> bool:
        # The supervisor watches the engine core processes: a client of an engine it did not
        # start has no monitor of its own in vLLM, and would wait on a dead engine forever.
        return not self.signals.engine_dead.is_set()

    def listening(self) -> None:
        self.signals.listening.set()

    async def ready_to_serve(self) -> None:
        """Reports this front end warmed up, then waits until every front end is: the kernel
        spreads connections over all of them, so none reports SERVING while another would
        still refuse calls."""
        self.signals.serving.set()
        await wait_for(self.signals.all_serving)


def front_end_engine_args(engine_args: dict[str, Any], count: int, rank: int) -> AsyncEngineArgs:
    """AsyncEngineArgs for one of `count` front ends (rank -1: the supervisor's own view).
    vLLM sizes per-front-end resources (its multimodal IPC caches) from these two."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = AsyncEngineArgs(**engine_args)
    args._api_process_count = count
    args._api_process_rank = rank
    return args


async def wait_for(event: Event) -> None:
    # A multiprocessing event: no asyncio.Event can be set from another process.
    while not event.is_set():  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)
