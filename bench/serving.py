"""Front-end cost of the gRPC backend, measured against vLLM's AsyncLLM alone in the same run.

One workload: N concurrent greedy streaming chats, each generating exactly --tokens tokens
(EOS is banned with a logit bias), in waves. It runs, one after the other and with the same
engine settings on the same model:

  raw     AsyncLLM driven in-process (no server): the baseline, at the start and at the end
  ours    `python -m backend serve`, driven over gRPC
  openai  vLLM's own OpenAI-compatible server, driven over HTTP (SSE)

and prints tokens/s, time to first token p50/p99, each server's ratio to the baseline, and the
resident memory of each server's front-end process (the engine core is a separate process in
all three) over the raw engine's. These machines are noisy: read the ratios, not the absolutes.

    .venv/bin/python bench/serving.py [--concurrency 32 128] [--tokens 128] [--waves 3]
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
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

ENGINE = {"enforce_eager": True, "dtype": "float32", "max_model_len": 1024, "seed": 0}
KV_CACHE_GIB = "2"
RESULT_PREFIX = "RESULT "


@dataclass
class Wave:
    concurrency: int
    tokens: int
    seconds: float
    ttfts: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Result:
    system: str
    concurrency: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    rss_mb: float


def summarize(system: str, waves: list[Wave], rss_mb: float) -> Result:
    ttfts = sorted(t for w in waves for t in w.ttfts)
    return Result(
        system=system,
        concurrency=waves[0].concurrency,
        tokens_per_s=sum(w.tokens for w in waves) / sum(w.seconds for w in waves),
        ttft_p50_ms=statistics.median(ttfts) * 1000,
        ttft_p99_ms=ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] * 1000,
        rss_mb=rss_mb,
    )


def prompt_text(i: int) -> str:
    return f"Tell me story number {i} about the capital of France."


# -- the raw engine (run in a child process so its memory is measured like a server's) --------


async def raw_engine(model: Path, concurrencies: list[int], tokens: int, waves: int) -> None:
    import psutil
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs.engine import tokens_input
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model), **ENGINE))
    tokenizer = llm.get_tokenizer()

    def params(i: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=tokens,
            temperature=0,
            logit_bias={tokenizer.eos_token_id: -100},
            output_kind=RequestOutputKind.DELTA,
        )

    def prompt_ids(i: int) -> list[int]:
        messages = [{"role": "user", "content": prompt_text(i)}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)

    async def one(i: int, wave: str) -> tuple[float, int]:
        started = time.perf_counter()
        first, count = None, 0
        async for out in llm.generate(tokens_input(prompt_ids(i)), params(i), f"{wave}-{i}"):
            if out.outputs[0].text:  # the first token a client could show
                first = first or time.perf_counter()
            count += len(out.outputs[0].token_ids)
        return (first or started) - started, count

    for concurrency in concurrencies:
        results = []
        for wave in range(waves + 1):  # the first wave warms up and is not counted
            started = time.perf_counter()
            done = await asyncio.gather(
                *(one(i, f"{concurrency}-{wave}") for i in range(concurrency))
            )
            seconds = time.perf_counter() - started
            if wave:
                results.append(
                    Wave(concurrency, sum(c for _, c in done), seconds, [t for t, _ in done])
                )
        rss = psutil.Process().memory_info().rss / 2**20
        summary = {"waves": [asdict(w) for w in results], "rss_mb": rss}
        print(RESULT_PREFIX + json.dumps(summary), flush=True)  # vLLM logs to stdout too
    llm.shutdown()


def run_raw(model: Path, concurrencies: list[int], tokens: int, waves: int) -> list[Result]:
    command = [
        sys.executable,
        __file__,
        "--role",
        "raw",
        "--model",
        str(model),
        "--tokens",
        str(tokens),
        "--waves",
        str(waves),
        "--concurrency",
        *map(str, concurrencies),
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB, "VLLM_LOGGING_LEVEL": "WARNING"}
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if output.returncode:
        raise RuntimeError(output.stderr[-3000:])
    results = []
    for line in output.stdout.splitlines():
        if not line.startswith(RESULT_PREFIX):
            continue
        data = json.loads(line[len(RESULT_PREFIX) :])
        results.append(summarize("raw", [Wave(**w) for w in data["waves"]], data["rss_mb"]))
    return results


# -- ours, over gRPC ------------------------------------------------------------------------


async def drive_grpc(address: str, tokenizer_eos: int, concurrency: int, tokens: int) -> Wave:
    import grpc

    from backend.proto.chat import chat_pb2

    async with grpc.aio.insecure_channel(address) as channel:
        # Raw bytes in: the client parses only the last message (for usage), so its own cost
        # stays small next to the server's.
        stream = channel.unary_stream(
            "/chat.ChatCompletionStreamService/ChatCompleteStream",
            request_serializer=chat_pb2.ChatCompletionRequest.SerializeToString,
            response_deserializer=None,
        )

        async def one(i: int) -> tuple[float, int]:
            request = chat_pb2.ChatCompletionRequest(
                chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=prompt_text(i))],
                max_new_tokens=tokens,
                temperature=0,
                logit_bias={str(tokenizer_eos): -100},
            )
            started = time.perf_counter()
            first, last = None, b""
            async for message in stream(request):
                first = first or time.perf_counter()
                last = message
            usage = chat_pb2.ChatCompletionResponse.FromString(last).usage
            return (first or started) - started, usage.completion_tokens

        started = time.perf_counter()
        done = await asyncio.gather(*(one(i) for i in range(concurrency)))
        seconds = time.perf_counter() - started
    return Wave(concurrency, sum(c for _, c in done), seconds, [t for t, _ in done])


def run_ours(
    model: Path, eos: int, concurrencies: list[int], tokens: int, waves: int
) -> list[Result]:
    import psutil
    from backend_process import BackendProcess

    settings = {
        "engine": {**ENGINE, "cpu_kvcache_space_gib": int(KV_CACHE_GIB)},
        "limits": {"max_in_flight": 1024},
    }
    with tempfile.TemporaryDirectory() as workdir:
        backend = BackendProcess(model, Path(workdir), settings).start()
        try:
            backend.wait_serving()
            results = []
            for concurrency in concurrencies:
                measured = [
                    asyncio.run(drive_grpc(backend.address, eos, concurrency, tokens))
                    for _ in range(waves + 1)
                ][1:]
                rss = psutil.Process(backend.process.pid).memory_info().rss / 2**20  # type: ignore[union-attr]
                results.append(summarize("ours", measured, rss))
            return results
        finally:
            backend.stop()


# -- vLLM's OpenAI server, over HTTP --------------------------------------------------------


async def drive_openai(port: int, eos: int, concurrency: int, tokens: int) -> Wave:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[float, int]:
        body = {
            "model": "bench",
            "stream": True,
            "max_tokens": tokens,
            "temperature": 0,
            "messages": [{"role": "user", "content": prompt_text(i)}],
            "logit_bias": {str(eos): -100},
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        first, usage_line = None, b""
        async with session.post(url, json=body) as response:
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                # The first chunk only announces the role; the first token comes after it.
                if first is None and b'"content":""' not in line and b'"content":' in line:
                    first = time.perf_counter()
                if b'"usage":{' in line:
                    usage_line = line
        usage = json.loads(usage_line[len(b"data: ") :])["usage"]
        return (first or started) - started, usage["completion_tokens"]

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        done = await asyncio.gather(*(one(session, i) for i in range(concurrency)))
        seconds = time.perf_counter() - started
    return Wave(concurrency, sum(c for _, c in done), seconds, [t for t, _ in done])


def run_openai(
    model: Path, eos: int, concurrencies: list[int], tokens: int, waves: int
) -> list[Result]:
    import socket
    import urllib.request

    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        "bench",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--dtype",
        ENGINE["dtype"],
        "--max-model-len",
        str(ENGINE["max_model_len"]),
        "--seed",
        "0",
    ]
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB,
        "VLLM_LOGGING_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode()[-3000:])  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        results = []
        for concurrency in concurrencies:
            measured = [
                asyncio.run(drive_openai(port, eos, concurrency, tokens)) for _ in range(waves + 1)
            ][1:]
            rss = psutil.Process(server.pid).memory_info().rss / 2**20
            results.append(summarize("openai", measured, rss))
        return results
    finally:
        server.terminate()
        server.wait(120)


# -- report ---------------------------------------------------------------------------------


def report(raw: list[list[Result]], others: dict[str, list[Result]]) -> None:
    print(
        "\nsystem   streams   tokens/s   ratio   TTFT p50 ms  (+added)   TTFT p99 ms"
        "   front-end RSS MB (over raw)"
    )
    for index, baselines in enumerate(zip(*raw, strict=True)):
        base_tps = statistics.mean(b.tokens_per_s for b in baselines)
        base_p50 = statistics.mean(b.ttft_p50_ms for b in baselines)
        base_rss = statistics.mean(b.rss_mb for b in baselines)
        for b in baselines:
            ratio = b.tokens_per_s / base_tps
            print(
                f"raw      {b.concurrency:7d}   {b.tokens_per_s:8.0f}   {ratio:5.3f}   "
                f"{b.ttft_p50_ms:11.1f}              {b.ttft_p99_ms:11.1f}   {b.rss_mb:8.0f}"
            )
        for name, results in others.items():
            r = results[index]
            ratio = r.tokens_per_s / base_tps
            added = r.ttft_p50_ms - base_p50
            print(
                f"{name:8s} {r.concurrency:7d}   {r.tokens_per_s:8.0f}   {ratio:5.3f}   "
                f"{r.ttft_p50_ms:11.1f}  ({added:+7.1f})   {r.ttft_p99_ms:11.1f}   "
                f"{r.rss_mb:8.0f} ({r.rss_mb - base_rss:+.0f})"
            )
    print("\nraw appears twice (first and last run); ratios are against the mean of the two.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["bench", "raw"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help="model directory (default: a tiny random Llama)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--skip-openai", action="store_true")
    args = parser.parse_args()

    if args.role == "raw":
        asyncio.run(raw_engine(args.model, args.concurrency, args.tokens, args.waves))
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from tiny_model import build_tiny_llama

            model = build_tiny_llama(Path(scratch) / "tiny-llama")
        from transformers import AutoTokenizer

        eos = AutoTokenizer.from_pretrained(model).eos_token_id
        plan = (model, args.concurrency, args.tokens, args.waves)
        print(
            f"workload: {args.concurrency} streams x {args.tokens} tokens, {args.waves} waves each",
            flush=True,
        )
        raw_first = run_raw(*plan)
        print("raw engine done", flush=True)
        others = {"ours": run_ours(model, eos, *plan[1:])}
        print("ours done", flush=True)
        if not args.skip_openai:
            others["openai"] = run_openai(model, eos, *plan[1:])
            print("openai done", flush=True)
        raw_last = run_raw(*plan)
        report([raw_first, raw_last], others)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
