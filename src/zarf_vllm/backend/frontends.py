"""`server.api_processes` > 1: `serve` as a small supervisor of several front-end processes,
each the usual BackendServer (server.py) and a client of one engine, on the same ports.

One Python process serves every stream's tokens (gRPC's per-message cost, the detokenizer, the
request logs); on a GPU node the engine can outrun it. vLLM's answer is `--api-server-count`:
the engine core started once, and several API server processes on one port, each a client of
it. This is the same plan, with vLLM's own launcher:

    supervisor (this module)   the metrics port; the engine core(s); front ends 0..N-1
    front end i                server.BackendServer whose engine is an AsyncLLM client
                               (client i of N, engine_source.py) on the gRPC, OpenAI, adapter
                               and health ports, all with SO_REUSEPORT: the kernel spreads
                               connections over the processes
    engine core(s)             vLLM's, as in one process

Lifecycle, as truthful as one process's: every front end listens at once and reports
NOT_SERVING until its client is attached and warmed up, and until every other front end is too.
SIGTERM drains every front end (each its own drain), then stops the engine core: exit 0. If an
engine core or a front end dies, the others stop and the supervisor exits 1, so Kubernetes
restarts the pod.

Metrics: one port for the pod, served here. Each process keeps its values in files under a
fresh PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, as vLLM does with several
API servers) and this process serves their merge, so a scrape sees every front end's calls and
vLLM's engine metrics as one pod's, under the series names one process has.
"""

from __future__ import annotations

import math
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

from zarf_vllm.backend.adapters import adapter_port, served_adapters
from zarf_vllm.backend.config import Settings
from zarf_vllm.backend.engine_source import EngineSource, FrontEndSignals
from zarf_vllm.backend.logs import get_logger, log_event
from zarf_vllm.backend.metrics import MULTIPROC_DIR_ENV
from zarf_vllm.model.manifest import ModelManifest

logger = get_logger("frontends")

EXIT_OK = 0
EXIT_FAILED = 1
# How often the supervisor looks at its processes and at a stop request.
WATCH_INTERVAL_S = 0.2
# A front end imports grpc and the backend before it listens: seconds, even on a busy node.
LISTEN_TIMEOUT_S = 120.0
# Past its drain, what a front end may still take to stop (gRPC's grace, its engine client's
# shutdown) before it is killed.
STOP_MARGIN_S = 15.0


class StartAborted(Exception):
    """A stop request (or a dead process) while the engine or the front ends were starting."""


@dataclass
class FrontEnd:
    index: int
    process: BaseProcess
    signals: FrontEndSignals

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None


def run_front_ends(settings: Settings, manifest: ModelManifest | None) -> int:
    """Runs the pod's processes until SIGTERM (exit 0) or a death among them (exit 1)."""
    return Supervisor(settings, manifest).run()


class Supervisor:
    def __init__(self, settings: Settings, manifest: ModelManifest | None) -> None:
        self.settings = settings
        self.manifest = manifest
        self.adapters = served_adapters(settings, manifest)  # as one process holds them
        self.count = settings.server.api_processes
        self.front_ends: list[FrontEnd] = []
        self.engines: Any = None  # vLLM's CoreEngineProcManager
        self.coordinator: Any = None  # vLLM's DPCoordinator (data parallel only)
        self._stop_requested = False
        self._starting = False
        self._context = multiprocessing.get_context("spawn")
        self._listeners: Any = None  # vLLM's EngineZmqListeners, while starting

    # -- the whole run ------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        with merged_metrics() as metrics_dir, reserved_ports(self.settings) as ports:
            try:
                return self._start_and_supervise(metrics_dir, ports)
            except StartAborted as exc:
                stopped = self._stop_requested
                log_event(logger, "start-up stopped", reason=str(exc) or "stop requested")
                return EXIT_OK if stopped else EXIT_FAILED
            finally:
                self._stop_everything(metrics_dir)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        log_event(logger, "stop requested", signal=signal.Signals(signum).name)
        if self._starting:
            # vLLM's start-up wait blocks in its own loop: leave it the way vLLM's own
            # supervisor does, by raising out of it.
            raise StartAborted("stop requested while starting")

    def _start_and_supervise(self, metrics_dir: str, ports: dict[str, Any]) -> int:
        metrics_port = serve_merged_metrics(self.settings, metrics_dir)
        self._starting = True
        self._start(front_end_settings(self.settings, ports, self.count), ports, metrics_port)
        # Each front end connects its client and serves its warm-up request: no bound here,
        # as one process has none on its own warm-up.
        self._wait_until(lambda: all(f.signals.serving.is_set() for f in self.front_ends))
        self._starting = False
        for front_end in self.front_ends:
            front_end.signals.all_serving.set()
        log_event(logger, "every front end serving", api_processes=self.count)
        return self._supervise()

    # -- start-up -----------------------------------------------------------------------

    def _start(
        self, settings_data: dict[str, Any], ports: dict[str, Any], metrics_port: int | None
    ) -> None:
        """Starts the engine core(s) with vLLM's launcher and the front ends beside them;
        returns once every engine core is ready and every front end listens."""
        from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
        from vllm.v1.executor import Executor

        config, engine_args = self._engine_config()
        # Held by the supervisor, not this frame, so _stop_everything frees them while the
        # interpreter still runs (vLLM's __del__ of them fails at interpreter exit).
        self._listeners = bind_engine_zmq_listeners(config, self.count)
        try:
            with launch_core_engines(
                config, Executor.get_class(config), True, self._listeners.addresses
            ) as launch:
                self.engines, self.coordinator = launch.engine_manager, launch.coordinator
                coordinator = self.coordinator
                stats = None if coordinator is None else coordinator.get_stats_publish_address()
                for index in range(self.count):
                    client = client_config(self._listeners, index, self.count, stats)
                    self._spawn(index, settings_data, engine_args, client)
                    # The front end holds its own copies now.
                    self._listeners.inputs[index].close()
                    self._listeners.outputs[index].close()
                # vLLM's start-up wait fails at once if a front end dies meanwhile.
                launch.watched_frontend_processes = [f.process for f in self.front_ends]
                self._wait_until(
                    lambda: all(f.signals.listening.is_set() for f in self.front_ends),
                    LISTEN_TIMEOUT_S,
                )
                log_event(
                    logger,
                    "listening",
                    port=ports["port"],
                    metrics_port=metrics_port,
                    openai_port=ports["openai_port"],
                    health_port=ports["health_port"],
                    adapter_ports=self._adapter_ports(ports["port"]),
                    api_processes=self.count,
                    pids=[f.process.pid for f in self.front_ends],
                )
            # Leaving the block waited for every engine core to report ready.
        except RuntimeError as exc:
            raise StartAborted(str(exc)) from exc
        log_event(logger, "engine core ready; front ends connecting")
        for front_end in self.front_ends:
            front_end.signals.engine_up.set()

    def _adapter_ports(self, model_port: int) -> dict[str, int]:
        """The LoRA adapters' gRPC ports every front end listens on, as one process logs them."""
        return {a.name: adapter_port(model_port, i) for i, a in enumerate(self.adapters)}

    def _engine_config(self) -> tuple[Any, dict[str, Any]]:
        """The engine's arguments, resolved exactly as one process resolves them, and vLLM's
        config of them as the supervisor of `count` front ends (api process rank -1)."""
        from vllm.usage.usage_lib import UsageContext

        from zarf_vllm.backend import engine
        from zarf_vllm.backend.engine_source import front_end_engine_args
        from zarf_vllm.backend.runtime import is_embedding_model, openai_sampling_defaults

        settings, manifest = self.settings, self.manifest
        engine._set_cpu_kvcache(settings)  # the engine core reads it from the environment
        defaults = None
        if settings.server.openai_port is not None:
            defaults = openai_sampling_defaults(settings, manifest)
        args = engine._resolved_args(
            settings,
            is_embedding_model(settings, manifest),
            defaults,
            self.adapters,
        )
        vllm_args = front_end_engine_args(args, self.count, -1)
        # engine_source.connect builds each client's config with the same context.
        config = vllm_args.create_engine_config(usage_context=UsageContext.ENGINE_CONTEXT)
        return config, args

    def _spawn(
        self,
        index: int,
        settings_data: dict[str, Any],
        engine_args: dict[str, Any],
        client: dict[str, Any],
    ) -> None:
        ctx = self._context
        signals = FrontEndSignals(ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event())
        source = EngineSource(index, self.count, engine_args, client, signals)
        process = ctx.Process(
            target=front_end_main,
            name=source.name,
            args=(settings_data, self.manifest, source),
        )
        process.start()
        self.front_ends.append(FrontEnd(index, process, signals))

    def _wait_until(self, done: Callable[[], bool], timeout: float = math.inf) -> None:
        """Waits for `done()` while watching every process; raises StartAborted if one dies
        or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not done():
            if self._stop_requested:
                raise StartAborted("stop requested while starting")
            dead = self._dead_processes()
            if dead:
                raise StartAborted(f"exited while starting: {dead}")
            if time.monotonic() > deadline:
                raise StartAborted(f"the front ends did not get there within {timeout:g} s")
            self._wait_any(WATCH_INTERVAL_S)

    # -- running ------------------------------------------------------------------------

    def _supervise(self) -> int:
        """Until SIGTERM (every front end drains: exit 0) or a death (exit 1)."""
        while not self._stop_requested:
            dead = self._dead_processes()
            if dead:
                return self._after_death(dead)
            self._wait_any(WATCH_INTERVAL_S)
        return self._drain()

    def _dead_processes(self) -> dict[str, int | None]:
        engines = [] if self.engines is None else list(self.engines.processes)
        if self.coordinator is not None:
            engines.append(self.coordinator.proc)
        processes = [f.process for f in self.front_ends] + engines
        return {p.name: p.exitcode for p in processes if p.exitcode is not None}

    def _wait_any(self, timeout: float) -> None:
        sentinels = [f.process.sentinel for f in self.front_ends]
        if self.engines is not None:
            sentinels += self.engines.sentinels()
        if self.coordinator is not None:
            sentinels.append(self.coordinator.proc.sentinel)
        multiprocessing.connection.wait(sentinels, timeout=timeout)

    def _after_death(self, dead: dict[str, int | None]) -> int:
        front_end_names = {f.process.name for f in self.front_ends}
        if set(dead) <= front_end_names:
            log_event(logger, "a front end exited; stopping the others", exited=dead)
            self._terminate_front_ends()
        else:
            # Its clients have no monitor of their own (engine_source.py): they learn it here
            # and stop at their next engine check, without a drain, as one process does.
            log_event(logger, "an engine core exited; stopping the front ends", exited=dead)
            for front_end in self.front_ends:
                front_end.signals.engine_dead.set()
        self._join_front_ends(self.settings.server.engine_check_interval_s + STOP_MARGIN_S)
        return EXIT_FAILED

    def _drain(self) -> int:
        log_event(logger, "draining every front end", api_processes=self.count)
        self._terminate_front_ends()
        self._join_front_ends(self.settings.limits.drain_timeout_s + STOP_MARGIN_S)
        codes = {f.process.name: f.process.exitcode for f in self.front_ends}
        return EXIT_OK if all(code == 0 for code in codes.values()) else EXIT_FAILED

    # -- stopping -----------------------------------------------------------------------

    def _terminate_front_ends(self) -> None:
        for front_end in self.front_ends:
            if front_end.alive:
                front_end.process.terminate()  # SIGTERM: its own drain

    def _join_front_ends(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for front_end in self.front_ends:
            front_end.process.join(max(0.0, deadline - time.monotonic()))
        for front_end in self.front_ends:
            if front_end.alive:
                name = front_end.process.name
                log_event(logger, "front end did not stop in time; killing it", name=name)
                front_end.process.kill()
                front_end.process.join(5)

    def _stop_everything(self, metrics_dir: str) -> None:
        """Whatever happened: no front end, engine core or coordinator outlives this process."""
        self._stop_requested = True
        self._starting = False
        if any(f.alive for f in self.front_ends):
            self._terminate_front_ends()
            self._join_front_ends(STOP_MARGIN_S)
        if self.engines is not None:
            self.engines.shutdown(timeout=STOP_MARGIN_S)
        if self.coordinator is not None:
            self.coordinator.shutdown(timeout=STOP_MARGIN_S)
        if self._listeners is not None:
            self._listeners.cleanup()
            self._listeners = None
        forget_processes(metrics_dir, [f.process.pid for f in self.front_ends])
        codes = {f.process.name: f.process.exitcode for f in self.front_ends}
        log_event(logger, "stopped", front_ends=codes)


# -- what each front end gets ---------------------------------------------------------------


def front_end_settings(settings: Settings, ports: dict[str, Any], count: int) -> dict[str, Any]:
    """The settings every front end runs with, as plain data (they cross a process boundary):
    the supervisor's, with the ports it resolved, no metrics port of their own (the
    supervisor serves the merge), and their share of the cap on calls in flight."""
    data = settings.model_dump()
    server = data["server"]
    server.update(port=ports["port"], openai_port=ports["openai_port"], metrics_port=None)
    data["tls"]["health_port"] = ports["health_port"]
    # The cap stays the pod's: the kernel spreads connections about evenly, so each front end
    # admits its share (rounded up, so none admits fewer than one).
    data["limits"]["max_in_flight"] = math.ceil(settings.limits.max_in_flight / count)
    return data


def client_config(listeners: Any, index: int, count: int, stats: str | None) -> dict[str, Any]:
    """What vLLM's AsyncLLM takes as `client_addresses` for client `index`: its request and
    output queues' addresses and the sockets bound for them, which it adopts."""
    config: dict[str, Any] = {
        "input_address": listeners.inputs[index].address,
        "output_address": listeners.outputs[index].address,
        "input_listener": listeners.inputs[index].socket,
        "output_listener": listeners.outputs[index].socket,
    }
    if stats is not None:
        config["stats_update_address"] = stats  # data parallel: the coordinator's load reports
    return config


def front_end_main(
    settings_data: dict[str, Any], manifest: ModelManifest | None, source: EngineSource
) -> None:
    """A front-end process: the backend server on the supervisor's engine core."""
    import asyncio

    from zarf_vllm.backend.logs import configure_logging
    from zarf_vllm.backend.server import run as run_server

    # Validated as data, not read again from this process's environment and files: the
    # supervisor already read them, and changed the ports and the cap.
    settings = Settings.model_validate(settings_data)
    configure_logging(settings.server.log_level)
    raise SystemExit(asyncio.run(run_server(settings, manifest, source)))


# -- the ports and the metrics ----------------------------------------------------------------


@contextmanager
def reserved_ports(settings: Settings) -> Iterator[dict[str, Any]]:
    """The ports every front end listens on, with 0 (any free port) resolved once. Each is held
    by a socket bound with SO_REUSEPORT that never listens, so it takes no connection and the
    port stays this pod's while the front ends bind it beside each other."""
    server = settings.server
    wanted = {
        "port": server.port,
        "openai_port": server.openai_port,
        "health_port": settings.tls.health_port,
    }
    held: list[socket.socket] = []
    ports: dict[str, Any] = {}
    try:
        for key, port in wanted.items():
            if port is None:
                ports[key] = None
                continue
            sock = socket.socket(socket.AF_INET6 if ":" in server.host else socket.AF_INET)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((server.host, port))
            ports[key] = sock.getsockname()[1]
        yield ports
    finally:
        for sock in held:
            sock.close()


@contextmanager
def merged_metrics() -> Iterator[str]:
    """A fresh PROMETHEUS_MULTIPROC_DIR for this run, under the temporary directory (/tmp, the
    one writable place in the container), removed afterwards. Fresh even when the environment
    names one: files left by an earlier run (a restarted container keeps its /tmp) would add
    that run's counts to this one's."""
    directory = tempfile.mkdtemp(prefix="zarf-vllm-metrics-")
    os.environ[MULTIPROC_DIR_ENV] = directory  # every process started from here on writes there
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def serve_merged_metrics(settings: Settings, directory: str) -> int | None:
    """The metrics port, answering with every process's values merged; None when disabled."""
    if settings.server.metrics_port is None:
        return None
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from zarf_vllm.backend.metrics import serve_metrics

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return serve_metrics(settings.server.host, settings.server.metrics_port, registry)


def forget_processes(directory: str, pids: list[int | None]) -> None:
    """Drops exited processes' live gauges (the `livesum` ones) from the merge."""
    from prometheus_client import multiprocess

    for pid in pids:
        if pid is not None:
            multiprocess.mark_process_dead(pid, directory)
