"""Front-end cost of the gRPC backend, against vLLM's AsyncLLM alone and vLLM's OpenAI server.

One workload: N concurrent streaming chats, each generating exactly --tokens tokens (EOS is
banned with a logit bias), in waves.

On these 2-core machines, two engine processes started one after the other can differ by 40%
in raw speed (where the OS places the engine core next to vLLM's pinned worker). So each server
is measured against a baseline run *in its own process, on the same engine*: the process that
hosts the server alternates waves driven straight into its AsyncLLM ("raw") with waves driven
through the server by a client in another process ("served"). The ratio served/raw is then free
of the placement noise. The systems:

  ours    our gRPC server (BackendServer, asyncio loop, INFO request logs as in production),
          once per configuration (--configs):
            default  the server's own defaults (config.py: dtype auto, torch.compile, the
                     default stream interval), clients sampling at temperature 0.8
            tuned    float32, enforce_eager, greedy clients (what this benchmark measured alone
                     before)
            eager    the defaults with enforce_eager: true
            compiled the defaults with enforce_eager: false (torch.compile; the default on
                     the CPU before this benchmark measured it)
            nobind   the defaults with VLLM_CPU_OMP_THREADS_BIND=nobind: vLLM-CPU's OpenMP
                     threads unpinned (by default it pins them and keeps one core free)
            iomp     the defaults with Intel's OpenMP preloaded (LD_PRELOAD of the libiomp5.so
                     that BENCH_IOMP names, e.g. from PyPI's intel-openmp wheel), as vLLM-CPU's
                     docs suggest, in place of the GNU OpenMP that torch links
            procs2   the defaults with server.api_processes: 2, `serve` as its own process
                     tree (supervisor, two front ends on one port, one engine core); its raw
                     baseline is an AsyncLLM of the host's own, so a second engine: that ratio
                     carries the placement noise the others are free of. A shared channel is
                     one connection, so one front end: only per-call spreads over both
          and per configuration two client patterns (--channels): one channel shared by every
          call ("shared"), and a new channel, so a new connection, per call ("per-call", what
          the LeapfrogAI API does).
  openai  vLLM's own OpenAI-compatible server (its FastAPI app on uvloop, as `vllm serve` runs),
          on the tuned configuration

The raw baseline samples as the served waves do, so served/raw is the front end's cost; raw
tokens/s across configurations (each in its own process) compares the engines, noisily.

Memory: the resident set of each server's front-end process (the engine core is a separate
process in every case) minus that of a process holding only AsyncLLM.

    .venv/bin/python bench/serving.py [--concurrency 32 128] [--tokens 128] [--rounds 3]
        [--configs default tuned] [--channels shared per-call] [--skip-openai]
        [--plot serving.png]

--concurrency takes the sweep (e.g. --concurrency 8 32 128); --plot also writes a PNG of it
(bench/plot.py): output tokens/s and TTFT p50 against concurrency, one line per system,
configuration and client pattern, each host's raw AsyncLLM baseline dashed. It needs the `bench`
extra (matplotlib): `.venv/bin/pip install -e '.[bench]'`, or `EXTRAS=cpu,demo,test,bench
scripts/setup`; without --plot the benchmark runs without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plot import Row  # bench/plot.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

ENGINE = {"enforce_eager": True, "dtype": "float32", "max_model_len": 1024, "seed": 0}


@dataclass(frozen=True)
class Config:
    """One way to run our server: engine settings over the defaults, the clients' temperature,
    and environment for the host process."""

    engine: dict
    temperature: float
    env: dict
    server: dict = field(default_factory=dict)


# The clients' temperature for "default": what the issue measured; LeapfrogAI sends 1.0.
CONFIGS = {
    "default": Config({}, 0.8, {}),
    "tuned": Config({"enforce_eager": True, "dtype": "float32"}, 0.0, {}),
    "eager": Config({"enforce_eager": True}, 0.8, {}),
    "compiled": Config({"enforce_eager": False}, 0.8, {}),
    "nobind": Config({}, 0.8, {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}),
    "iomp": Config({}, 0.8, {"LD_PRELOAD": os.environ.get("BENCH_IOMP", "")}),
    "procs2": Config({}, 0.8, {}, {"api_processes": 2}),
}
CHANNELS = ("shared", "per-call")
KV_CACHE_GIB = "2"
RESULT = "RESULT "  # marks our lines on stdout, where vLLM may log too


@dataclass
class Wave:
    tokens: int
    seconds: float
    ttfts: list[float]
    client_cpu_s: float = 0.0  # CPU the client process used (0 for raw waves: no client)
    host_cpu_s: float = 0.0  # CPU the process hosting the engine front end used


def report_result(data: dict) -> None:
    print(RESULT + json.dumps(data), flush=True)


def read_results(stdout: str) -> list[dict]:
    return [
        json.loads(line[len(RESULT) :]) for line in stdout.splitlines() if line.startswith(RESULT)
    ]


def prompt_text(i: int) -> str:
    return f"Tell me story number {i} about the capital of France."


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# -- the raw workload, straight into an AsyncLLM ------------------------------------------


async def raw_wave(llm, concurrency: int, tokens: int, tag: str, temperature: float) -> Wave:
    from vllm import SamplingParams
    from vllm.inputs.engine import tokens_input
    from vllm.sampling_params import RequestOutputKind

    tokenizer = llm.get_tokenizer()
    params = SamplingParams(
        max_tokens=tokens,
        temperature=temperature,
        logit_bias={tokenizer.eos_token_id: -100},
        output_kind=RequestOutputKind.DELTA,
    )

    async def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        messages = [{"role": "user", "content": prompt_text(i)}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer.encode(text, add_special_tokens=False)
        first, count = None, 0
        async for out in llm.generate(tokens_input(ids), params, f"{tag}-{i}"):
            if out.outputs[0].text:  # the first token a client could show
                first = first or time.perf_counter()
            count += len(out.outputs[0].token_ids)
        return (first or started) - started, count

    started = time.perf_counter()
    done = await asyncio.gather(*(one(i) for i in range(concurrency)))
    return Wave(sum(c for _, c in done), time.perf_counter() - started, [t for t, _ in done])


async def alternate(
    llm,
    served_waves: dict[str, Callable[[int], Awaitable[Wave]]],
    concurrencies: list[int],
    tokens: int,
    rounds: int,
    temperature: float,
    rss: Callable[[], float] = rss_mb,
) -> None:
    """raw, then each served pattern, again and again: the first round warms up, uncounted.
    `rss`: the served front end's memory (default: this process's)."""
    for concurrency in concurrencies:
        raw: list[dict] = []
        served: dict[str, list[dict]] = {name: [] for name in served_waves}
        for round_ in range(rounds + 1):
            cpu = time.process_time()
            tag = f"raw-{concurrency}-{round_}"
            r = await raw_wave(llm, concurrency, tokens, tag, temperature)
            r.host_cpu_s = time.process_time() - cpu
            if round_:
                raw.append(asdict(r))
            for name, served_wave in served_waves.items():
                cpu = time.process_time()
                s = await served_wave(concurrency)
                s.host_cpu_s = time.process_time() - cpu
                if round_:
                    served[name].append(asdict(s))
        report_result({"concurrency": concurrency, "raw": raw, "served": served, "rss_mb": rss()})


async def client_wave(
    role: str,
    address: str,
    concurrency: int,
    tokens: int,
    channel: str = "shared",
    temperature: float = 0.0,
) -> Wave:
    """One wave from a client in its own process, as a real client would be."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--role", role, "--address", address,
        "--concurrency", str(concurrency), "--tokens", str(tokens), "--channels", channel,
        "--temperature", str(temperature), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await process.communicate()
    if process.returncode:
        raise RuntimeError(f"{role} failed with exit code {process.returncode}")
    return Wave(**read_results(stdout.decode())[0])


# -- hosts: one engine process each ---------------------------------------------------------


async def host_raw(model: Path, concurrencies: list[int], tokens: int, rounds: int) -> None:
    """AsyncLLM alone: the memory baseline."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model), **ENGINE))
    for concurrency in concurrencies:
        for round_ in range(rounds + 1):
            await raw_wave(llm, concurrency, tokens, f"raw-{concurrency}-{round_}", 0.0)
    report_result({"rss_mb": rss_mb()})
    llm.shutdown()


async def host_ours(
    model: Path,
    concurrencies: list[int],
    tokens: int,
    rounds: int,
    config: str,
    channels: list[str],
) -> None:
    from zarf_vllm.backend.config import Settings
    from zarf_vllm.backend.logs import configure_logging
    from zarf_vllm.backend.offline import force_offline
    from zarf_vllm.backend.server import BackendServer

    force_offline()
    if CONFIGS[config].server.get("api_processes", 1) > 1:
        await host_processes(model, concurrencies, tokens, rounds, config, channels)
        return
    configure_logging("INFO")
    server = {"host": "127.0.0.1", "port": 0, "metrics_port": None}
    if "BENCH_STREAM_INTERVAL_MS" in os.environ:
        server["stream_interval_ms"] = float(os.environ["BENCH_STREAM_INTERVAL_MS"])
    settings = Settings.model_validate(
        {
            "model": {"path": str(model)},
            # The model's whole context is 1024; the seed is the settings' default.
            "engine": {**CONFIGS[config].engine, "cpu_kvcache_space_gib": int(KV_CACHE_GIB)},
            "limits": {"max_in_flight": 4096},
            "server": server,
        }
    )
    backend = BackendServer(settings, None)
    await backend.start()
    loading = time.perf_counter()
    await backend.load()  # engine start, warm-up request: until SERVING
    report_result({"load_s": time.perf_counter() - loading})
    address = f"127.0.0.1:{backend.port}"
    llm = backend.runtime.require_engine()._llm

    def wave(channel: str) -> Callable[[int], Awaitable[Wave]]:
        temperature = CONFIGS[config].temperature
        return lambda n: client_wave("grpc-client", address, n, tokens, channel, temperature)

    waves = {channel: wave(channel) for channel in channels}
    await alternate(llm, waves, concurrencies, tokens, rounds, CONFIGS[config].temperature)
    await backend.server.stop(None)
    llm.shutdown()


async def host_processes(
    model: Path,
    concurrencies: list[int],
    tokens: int,
    rounds: int,
    config: str,
    channels: list[str],
) -> None:
    """Our server with several front-end processes: `serve` in its own process tree, and the
    raw waves on an AsyncLLM of this process's own (a second engine, idle while served waves
    run)."""
    import psutil
    import yaml
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from support.backend_process import BackendProcess

    settings = {
        "model": {"path": str(model)},
        "engine": {**CONFIGS[config].engine, "cpu_kvcache_space_gib": int(KV_CACHE_GIB)},
        "limits": {"max_in_flight": 4096},
        "server": {"host": "127.0.0.1", "port": 0, "metrics_port": None, "openai_port": None,
                   **CONFIGS[config].server},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        config_file = Path(workdir) / "backend.yaml"
        config_file.write_text(yaml.safe_dump(settings))
        backend = BackendProcess(None, Path(workdir), config_file=config_file).start()
        try:
            loading = time.perf_counter()
            await asyncio.to_thread(backend.wait_serving)
            report_result({"load_s": time.perf_counter() - loading})
            llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model), **ENGINE))
            temperature = CONFIGS[config].temperature

            def wave(channel: str) -> Callable[[int], Awaitable[Wave]]:
                address = backend.address
                return lambda n: client_wave(
                    "grpc-client", address, n, tokens, channel, temperature
                )

            def front_ends_rss() -> float:
                # The supervisor and its front ends (the pids it logs); not the engine core,
                # its worker or multiprocessing's resource tracker.
                pids = [backend.process.pid, *backend.events("listening")[0]["pids"]]  # type: ignore[union-attr]
                return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20

            waves = {channel: wave(channel) for channel in channels}
            await alternate(
                llm, waves, concurrencies, tokens, rounds, temperature, rss=front_ends_rss
            )
            llm.shutdown()
        finally:
            backend.stop()


async def host_openai(model: Path, concurrencies: list[int], tokens: int, rounds: int) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.api_server.entry import build_and_serve
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.entrypoints.launchers.launcher import setup_server
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.engine.async_llm import AsyncLLM

    argv = ["--model", str(model), "--served-model-name", "bench", "--host", "127.0.0.1",
            "--port", "0", "--enforce-eager", "--dtype", ENGINE["dtype"],
            "--max-model-len", str(ENGINE["max_model_len"]), "--seed", "0",
            "--disable-uvicorn-access-log"]  # fmt: skip
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs.from_cli_args(args))
    listen_address, sock = setup_server(args, reuse_port=False)
    port = sock.getsockname()[1]
    # build_and_serve runs until the HTTP server stops: run it beside the measurements.
    serving = asyncio.create_task(build_and_serve(llm, listen_address, sock, args))
    await wait_for_http(f"http://127.0.0.1:{port}/health", serving)
    await alternate(
        llm,
        {"shared": lambda n: client_wave("http-client", f"127.0.0.1:{port}", n, tokens)},
        concurrencies,
        tokens,
        rounds,
        CONFIGS["tuned"].temperature,
    )
    serving.cancel()
    llm.shutdown()


async def wait_for_http(url: str, serving: asyncio.Task) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        while not serving.done():
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    serving.result()  # raises what stopped the server


# -- clients: one wave each, cheap parsing so the client's own cost stays small ------------


async def grpc_client(
    address: str, concurrency: int, tokens: int, channel: str, temperature: float
) -> Wave:
    import grpc

    from zarf_vllm.backend.proto.chat import chat_pb2

    method = "/chat.ChatCompletionStreamService/ChatCompleteStream"
    eos = int(os.environ.get("BENCH_EOS", "0"))

    def open_stream(channel: grpc.aio.Channel):
        # Raw bytes in: only the last message is parsed (for the usage).
        return channel.unary_stream(
            method,
            request_serializer=chat_pb2.ChatCompletionRequest.SerializeToString,
            response_deserializer=None,
        )

    async def one(shared: grpc.aio.Channel | None, i: int) -> tuple[float, int]:
        request = chat_pb2.ChatCompletionRequest(
            chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=prompt_text(i))],
            max_new_tokens=tokens, temperature=temperature, logit_bias={str(eos): -100},
        )  # fmt: skip
        started = time.perf_counter()
        first, last = None, b""
        if shared is None:
            # The LeapfrogAI API's pattern: a channel (so a connection) per call, set up on
            # the clock, since every request pays for it.
            async with grpc.aio.insecure_channel(address) as own:
                async for message in open_stream(own)(request):
                    first = first or time.perf_counter()
                    last = message
        else:
            async for message in open_stream(shared)(request):
                first = first or time.perf_counter()
                last = message
        usage = chat_pb2.ChatCompletionResponse.FromString(last).usage
        return (first or started) - started, usage.completion_tokens

    async with grpc.aio.insecure_channel(address) as shared:
        # Connected before the clock starts: a client that keeps its channel pays for the
        # connection once, not per request.
        await shared.channel_ready()
        started = time.perf_counter()
        own = shared if channel == "shared" else None
        done = await asyncio.gather(*(one(own, i) for i in range(concurrency)))
    return Wave(sum(c for _, c in done), time.perf_counter() - started, [t for t, _ in done])


async def http_client(address: str, concurrency: int, tokens: int) -> Wave:
    import aiohttp

    url = f"http://{address}/v1/chat/completions"
    eos = int(os.environ.get("BENCH_EOS", "0"))

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[float, int]:
        body = {
            "model": "bench", "stream": True, "max_tokens": tokens, "temperature": 0,
            "messages": [{"role": "user", "content": prompt_text(i)}],
            "logit_bias": {str(eos): -100}, "stream_options": {"include_usage": True},
        }  # fmt: skip
        started = time.perf_counter()
        first, usage_line = None, b""
        async with session.post(url, json=body) as response:
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                # The first chunk only announces the role; the first token comes after it.
                if first is None and b'"content":"' in line and b'"content":""' not in line:
                    first = time.perf_counter()
                if b'"usage":{' in line:
                    usage_line = line
        usage = json.loads(usage_line[len(b"data: ") :])["usage"]
        return (first or started) - started, usage["completion_tokens"]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # As for gRPC: open the connections first (one per concurrent stream, kept alive).
        async def connect() -> None:
            async with session.get(f"http://{address}/health") as response:
                await response.read()  # read to the end, so the connection goes back to the pool

        await asyncio.gather(*(connect() for _ in range(concurrency)))
        started = time.perf_counter()
        done = await asyncio.gather(*(one(session, i) for i in range(concurrency)))
    return Wave(sum(c for _, c in done), time.perf_counter() - started, [t for t, _ in done])


# -- the orchestrator ----------------------------------------------------------------------


def run_host(
    role: str, model: Path, eos: int, args: argparse.Namespace, config: str = "tuned"
) -> list[dict]:
    command = [sys.executable, __file__, "--role", role, "--model", str(model),
               "--tokens", str(args.tokens), "--rounds", str(args.rounds),
               "--concurrency", *map(str, args.concurrency), "--configs", config,
               "--channels", *args.channels]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB, "VLLM_LOGGING_LEVEL": "WARNING",
           "BENCH_EOS": str(eos), "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           **CONFIGS[config].env}  # fmt: skip
    if args.stream_interval_ms is not None:
        env["BENCH_STREAM_INTERVAL_MS"] = str(args.stream_interval_ms)
    with tempfile.TemporaryFile("w+") as log:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        if result.returncode:
            log.seek(0)
            raise RuntimeError(f"{role} failed:\n{log.read()[-4000:]}")
    return read_results(result.stdout)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def summarize(waves: list[dict]) -> tuple[float, float, float]:
    """tokens/s over all waves, TTFT p50 and p99 in ms."""
    ttfts = [t for w in waves for t in w["ttfts"]]
    tps = sum(w["tokens"] for w in waves) / sum(w["seconds"] for w in waves)
    return tps, statistics.median(ttfts) * 1000, percentile(ttfts, 0.99) * 1000


def round_ratio(raw: list[dict], served: list[dict]) -> float:
    """The median over rounds of served/raw tokens/s, each round's waves run back to back:
    less swayed than the pooled ratio by a burst of load from outside in one wave."""
    rate = [w["tokens"] / w["seconds"] for w in raw]
    ratios = [w["tokens"] / w["seconds"] / r for w, r in zip(served, rate, strict=True)]
    return statistics.median(ratios)


def client_share(waves: list[dict]) -> float:
    """The client's CPU time over the waves' wall time: CPU the engine could not use."""
    return sum(w["client_cpu_s"] for w in waves) / sum(w["seconds"] for w in waves)


def cpu_per_token(waves: list[dict]) -> float:
    """Microseconds of CPU in the engine's front-end process per generated token."""
    return 1e6 * sum(w["host_cpu_s"] for w in waves) / sum(w["tokens"] for w in waves)


def print_report(engine_only_rss: float | None, hosts: dict[str, list[dict]]) -> None:
    print(
        f"\n{'system':15} {'channel':8} {'streams':>7} {'raw tok/s':>10} {'served':>8}"
        f" {'ratio':>6} {'median':>6} {'TTFT p50 raw':>13} {'served':>7} {'added':>8}"
        f" {'p99 served':>11}"
        f" {'RSS over raw':>13} {'client CPU':>11} {'host CPU/token raw':>19} {'served':>7}"
    )
    for name, results in hosts.items():
        for r in results:
            if "load_s" in r:
                continue
            raw_tps, raw_p50, _ = summarize(r["raw"])
            for channel, waves in r["served"].items():
                tps, p50, p99 = summarize(waves)
                rss = "" if engine_only_rss is None else f"{r['rss_mb'] - engine_only_rss:+.0f} MB"
                print(
                    f"{name:15} {channel:8} {r['concurrency']:7d} {raw_tps:10.0f} {tps:8.0f}"
                    f" {tps / raw_tps:6.3f} {round_ratio(r['raw'], waves):6.3f}"
                    f" {raw_p50:11.1f}ms {p50:5.1f}ms {p50 - raw_p50:+6.1f}ms"
                    f" {p99:9.1f}ms {rss:>13} {client_share(waves):10.0%}"
                    f" {cpu_per_token(r['raw']):16.0f} us {cpu_per_token(waves):4.0f} us"
                )
    for name, results in hosts.items():
        for r in results:
            if "load_s" in r:
                print(f"{name}: {r['load_s']:.1f} s from start to SERVING (engine and warm-up)")
    if engine_only_rss is not None:
        print(f"\nAsyncLLM-only process: {engine_only_rss:.0f} MB resident.")
    print("ratio = served tokens/s / raw tokens/s, both measured in the same engine process,")
    print("        the raw waves sampling as the served ones do (the front end's own cost);")
    print("        median: the median over rounds of that ratio within each round.")
    print("client CPU = the client process's CPU time over the wall time of its waves.")
    print("host CPU/token = CPU of the process holding AsyncLLM (and the server), per token.")
    print_against_tuned(hosts)


def print_against_tuned(hosts: dict[str, list[dict]]) -> None:
    """Each configuration's served tokens/s over the tuned configuration's raw tokens/s: across
    engine processes, so placement noise is in it (see the module doc); indicative only."""
    tuned = {
        r["concurrency"]: summarize(r["raw"]) for r in hosts.get("ours/tuned", []) if "raw" in r
    }
    if not tuned:
        return
    print("\nagainst the tuned raw engine (another process: noisy):")
    for name, results in hosts.items():
        for r in results:
            if "load_s" in r:
                continue
            base_tps, base_p50, _ = tuned[r["concurrency"]]
            for channel, waves in r["served"].items():
                tps, p50, _ = summarize(waves)
                print(
                    f"  {name:15} {channel:8} {r['concurrency']:4d} streams:"
                    f" {tps / base_tps:.3f}x tokens/s, TTFT p50 {p50 - base_p50:+.1f} ms"
                )


def plot_rows(hosts: dict[str, list[dict]]) -> list[Row]:
    """The report's tokens/s and TTFT p50 as bench/plot.py's rows: each host's raw baseline and
    each of its served client patterns, per concurrency."""
    from plot import RAW, Row

    rows: list[Row] = []
    for name, results in hosts.items():
        for r in results:
            if "load_s" in r:
                continue
            waves = {RAW: r["raw"], **r["served"]}
            for client, measured in waves.items():
                tps, p50, _ = summarize(measured)
                rows.append(Row(name, client, r["concurrency"], tps, p50))
    return rows


def check_plot(path: Path | None) -> str | None:
    """Why --plot cannot be drawn, found before the benchmark's minutes rather than after."""
    if path is None:
        return None
    from plot import check_path

    try:
        check_path(path, "--plot")
    except ValueError as exc:
        return str(exc)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib, the bench extra: .venv/bin/pip install -e '.[bench]'"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help="model directory (default: a tiny random Llama)")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[32, 128],
        help="concurrent streams, one sweep point each (default: 32 128)",
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="measured raw/served pairs")
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument(
        "--skip-memory", action="store_true", help="no AsyncLLM-only process (one engine less)"
    )
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=["default", "tuned"])
    parser.add_argument("--channels", nargs="+", choices=CHANNELS, default=list(CHANNELS))
    parser.add_argument(
        "--stream-interval-ms",
        type=float,
        default=None,
        help="ours: server.stream_interval_ms (default: the server's default)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PATH.png",
        help="also write tokens/s and TTFT p50 against concurrency as a PNG (the bench extra)",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "bench" and (problem := check_plot(args.plot)):
        parser.error(problem)
    if any(c < 1 for c in args.concurrency):
        parser.error(f"--concurrency: each must be >= 1, got {args.concurrency}")
    if "iomp" in args.configs and not Path(os.environ.get("BENCH_IOMP", "")).is_file():
        parser.error("--configs iomp needs BENCH_IOMP=/path/to/libiomp5.so (intel-openmp wheel)")

    plan = (args.model, args.concurrency, args.tokens, args.rounds)
    if args.role == "grpc-client":
        cpu_before = time.process_time()
        wave = asyncio.run(
            grpc_client(
                args.address, args.concurrency[0], args.tokens, args.channels[0], args.temperature
            )
        )
        wave.client_cpu_s = time.process_time() - cpu_before
        report_result(asdict(wave))
        return 0
    if args.role == "http-client":
        cpu_before = time.process_time()
        wave = asyncio.run(http_client(args.address, args.concurrency[0], args.tokens))
        wave.client_cpu_s = time.process_time() - cpu_before
        report_result(asdict(wave))
        return 0
    if args.role == "host-raw":
        asyncio.run(host_raw(*plan))
        return 0
    if args.role == "host-ours":
        asyncio.run(host_ours(*plan, args.configs[0], args.channels))
        return 0
    if args.role == "host-openai":
        import uvloop  # vLLM's own server runs on uvloop

        uvloop.run(host_openai(*plan))
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from support.tiny_model import build_tiny_llama

            model = build_tiny_llama(Path(scratch) / "tiny-llama")
        from transformers import AutoTokenizer

        eos = AutoTokenizer.from_pretrained(model).eos_token_id
        print(f"workload: {args.concurrency} streams x {args.tokens} tokens, {args.rounds} rounds")
        engine_only = None
        if not args.skip_memory:
            engine_only = run_host("host-raw", model, eos, args)[0]["rss_mb"]
        hosts = {f"ours/{c}": run_host("host-ours", model, eos, args, c) for c in args.configs}
        if not args.skip_openai:
            hosts["openai"] = run_host("host-openai", model, eos, args)
        print_report(engine_only, hosts)
        if args.plot is not None:
            from plot import draw

            title = f"bench/serving.py: {args.tokens} tokens a stream, {args.rounds} rounds"
            print(f"\nplot: {draw(plot_rows(hosts), args.plot, title)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
