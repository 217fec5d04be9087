"""Our OpenAI-compatible port against `vllm serve`'s own server, on the same tiny model.

bench/serving.py's workload and method, reused from it: N concurrent greedy streaming chats of
exactly --tokens tokens, in waves; each server is measured against waves driven straight into
the AsyncLLM of its own process ("raw"), alternating raw and served waves, so the ratio
served/raw is free of the engine placement noise of these 2-core machines. The clients are
bench/serving.py's HTTP client (aiohttp, one process per wave, connections opened first). The
systems:

  ours-openai  the backend's OpenAI API (backend/openai: vLLM's serving layer behind our guard,
               uvicorn in the backend's asyncio loop, with the gRPC server beside it and INFO
               request logs, as in production)
  vllm-openai  vLLM's own OpenAI server (bench/serving.py's host, as `vllm serve` runs it)

The figure of merit is ours-openai's ratio over vllm-openai's: 1.0 means our admission, health,
logs and metrics cost nothing measurable next to `vllm serve`.

    .venv/bin/python bench/openai_serving.py [--concurrency 32 128] [--tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import serving  # bench/serving.py: the workload, the waves, the clients, the report's maths

ROLE = "host-ours-openai"
MODEL_NAME = "bench"  # the name bench/serving.py's HTTP client asks for


async def host_ours_openai(model: Path, concurrencies: list[int], tokens: int, rounds: int) -> None:
    from zarf_vllm.backend.config import Settings
    from zarf_vllm.backend.logs import configure_logging
    from zarf_vllm.backend.offline import force_offline
    from zarf_vllm.backend.server import BackendServer

    force_offline()
    configure_logging("INFO")
    settings = Settings.model_validate(
        {
            "model": {"path": str(model), "name": MODEL_NAME},
            "engine": {**serving.ENGINE, "cpu_kvcache_space_gib": int(serving.KV_CACHE_GIB)},
            "limits": {"max_in_flight": 4096},
            "server": {"host": "127.0.0.1", "port": 0, "metrics_port": None, "openai_port": 0},
        }
    )
    backend = BackendServer(settings, None)
    await backend.start()
    await backend.load()
    assert backend.openai is not None and backend.openai.port is not None
    address = f"127.0.0.1:{backend.openai.port}"
    llm = backend.runtime.require_engine().async_llm
    await serving.alternate(
        llm,
        lambda n: serving.client_wave("http-client", address, n, tokens),
        concurrencies,
        tokens,
        rounds,
    )
    await backend.stop_openai()
    await backend.server.stop(None)
    llm.shutdown()


def run_ours(model: Path, eos: int, args: argparse.Namespace) -> list[dict]:
    command = [sys.executable, __file__, "--role", ROLE, "--model", str(model),
               "--tokens", str(args.tokens), "--rounds", str(args.rounds),
               "--concurrency", *map(str, args.concurrency)]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": serving.KV_CACHE_GIB,
           "VLLM_LOGGING_LEVEL": "WARNING", "BENCH_EOS": str(eos)}  # fmt: skip
    with tempfile.TemporaryFile("w+") as log:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        if result.returncode:
            log.seek(0)
            raise RuntimeError(f"{ROLE} failed:\n{log.read()[-4000:]}")
    return serving.read_results(result.stdout)


def print_comparison(hosts: dict[str, list[dict]]) -> None:
    header = f"\n{'streams':>7} {'ours/raw':>9} {'vllm/raw':>9} {'ours/vllm':>10}"
    print(header + f" {'TTFT p50 added: ours':>21} {'vllm':>7} {'TTFT p99: ours':>15} {'vllm':>8}")
    by_streams = {r["concurrency"]: r for r in hosts["vllm-openai"]}
    for ours in hosts["ours-openai"]:
        vllm = by_streams[ours["concurrency"]]
        rows = []
        for result in (ours, vllm):
            raw_tps, raw_p50, _ = serving.summarize(result["raw"])
            tps, p50, p99 = serving.summarize(result["served"])
            rows.append((tps / raw_tps, p50 - raw_p50, p99))
        (o_ratio, o_added, o_p99), (v_ratio, v_added, v_p99) = rows
        print(
            f"{ours['concurrency']:7d} {o_ratio:9.3f} {v_ratio:9.3f} {o_ratio / v_ratio:10.3f}"
            f" {o_added:+19.1f}ms {v_added:+5.1f}ms {o_p99:13.1f}ms {v_p99:6.1f}ms"
        )
    print("x/raw = served tokens/s over raw tokens/s in the same engine process;")
    print("ours/vllm = the two ratios' quotient (1.0: our OpenAI port costs what vllm serve does).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help="model directory (default: a tiny random Llama)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="measured raw/served pairs")
    args = parser.parse_args()
    if args.role == ROLE:
        asyncio.run(host_ours_openai(args.model, args.concurrency, args.tokens, args.rounds))
        return 0
    # bench/serving.py's own options, for its vLLM host.
    args.stream_interval_ms = 50.0
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model
        if model is None:
            from support.tiny_model import build_tiny_llama

            model = build_tiny_llama(Path(scratch) / "tiny-llama")
        from transformers import AutoTokenizer

        eos = AutoTokenizer.from_pretrained(model).eos_token_id
        print(f"workload: {args.concurrency} streams x {args.tokens} tokens, {args.rounds} rounds")
        engine_only = serving.run_host("host-raw", model, eos, args)[0]["rss_mb"]
        hosts = {
            "ours-openai": run_ours(model, eos, args),
            "vllm-openai": serving.run_host("host-openai", model, eos, args),
        }
        serving.print_report(engine_only, hosts)
        print_comparison(hosts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
