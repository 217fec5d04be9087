"""The INT8 W8A8 demo model against the bf16 demo model, on the CPU, as the chart runs them.

Each system is the real backend started on what the chart renders for PROFILE=cpu (its
config.yaml and the container's env, tests/support/rendered_pod.py), one server process at a
time, the systems alternating over rounds (these machines are noisy):

  bf16      smollm2-135m-instruct, the cpu profile's default: float32 compute (sizing.cpu_dtype)
  bf16-bf16 the same with CPU_DTYPE=bfloat16
  int8      smollm2-135m-instruct-w8a8 (the recipe smollm2-gguf-w8a8): int8 linears, bfloat16
            elsewhere (its checkpoint's dtype, which the profile keeps for quantized models)

Per system and round: the greedy answer to the demo question; the weights as loaded (what the
sizing counts: the files' bytes, doubled where float32 widens bfloat16); the resident memory of
the server and its engine processes once SERVING and again after the load (summed RSS); and
--concurrency streaming chats of --tokens tokens each over one shared gRPC channel, in --waves
waves after a warm-up wave: output tokens/s and time to first token p50. The summary gives
medians over rounds and the ratios int8 / bf16 and int8 / bf16-bf16.

Prepare the models first (`scripts/pull smollm2-135m-instruct` and
`scripts/pull smollm2-135m-instruct-w8a8`, or any test run that uses them), then:

    .venv/bin/python bench/quantized_cpu.py [--rounds 2] [--concurrency 32] [--tokens 128]

Say which CPU it ran on: `grep -o 'avx512_bf16\\|amx_tile' /proc/cpuinfo | sort -u`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "bench")]

import psutil  # noqa: E402
from serving import grpc_client, percentile  # noqa: E402  (bench/serving.py)

from support.profiles_fixtures import manifest  # noqa: E402
from support.rendered_pod import render, rendered_backend  # noqa: E402
from zarf_vllm.model import sizing  # noqa: E402
from zarf_vllm.packaging.weights.pull import default_dest, pull  # noqa: E402

QUESTION = "What is the capital of France? Answer in one sentence."


@dataclass(frozen=True)
class System:
    name: str
    manifest_id: str
    sets: dict[str, str]


SYSTEMS = (
    System("bf16", "smollm2-135m-instruct", {}),
    System("bf16-bf16", "smollm2-135m-instruct", {"CPU_DTYPE": "bfloat16"}),
    System("int8", "smollm2-135m-instruct-w8a8", {}),
)


@dataclass
class Result:
    answer: str
    weight_bytes: int  # as loaded, by the sizing
    rss_serving: int  # bytes, server + engine processes, once SERVING
    rss_after: int  # the same after the load
    tokens_per_s: float
    ttft_p50_s: float


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def ask(address: str) -> str:
    import grpc

    from zarf_vllm.backend.proto.chat import chat_pb2, chat_pb2_grpc

    request = chat_pb2.ChatCompletionRequest(
        chat_items=[chat_pb2.ChatItem(role=chat_pb2.USER, content=QUESTION)],
        max_new_tokens=48, temperature=0.0, do_sample=False,
    )  # fmt: skip
    with grpc.insecure_channel(address) as channel:
        reply = chat_pb2_grpc.ChatCompletionServiceStub(channel).ChatComplete(request, timeout=300)
    return reply.choices[0].chat_item.content.strip()


def weights_as_loaded(system: System, dtype: str) -> int:
    facts = sizing.ModelFacts.from_manifest(manifest(system.manifest_id))
    return sizing.costs_for(facts, "cpu", None if dtype == "auto" else dtype).weight_bytes


def measure(system: System, args: argparse.Namespace, work: Path) -> Result:
    model = manifest(system.manifest_id)
    model_dir = pull(model, default_dest(model)).directory
    rendered = render(system.manifest_id, PROFILE="cpu", **system.sets)
    # Every stream generates exactly --tokens: the client bans the end-of-sequence token.
    generation = json.loads((model_dir / "generation_config.json").read_text())
    os.environ["BENCH_EOS"] = str(generation["eos_token_id"])
    backend = rendered_backend(model, model_dir, rendered, work)
    backend.start()
    try:
        backend.wait_serving()
        assert backend.process is not None
        rss_serving = tree_rss(backend.process.pid)
        answer = ask(backend.address)
        asyncio.run(grpc_client(backend.address, 8, 16, "shared", 0.0))  # warm-up
        waves = [
            asyncio.run(grpc_client(backend.address, args.concurrency, args.tokens, "shared", 0.0))
            for _ in range(args.waves)
        ]
        rss_after = tree_rss(backend.process.pid)
    finally:
        backend.stop()
    tokens = sum(w.tokens for w in waves)
    seconds = sum(w.seconds for w in waves)
    ttfts = [t for w in waves for t in w.ttfts]
    return Result(
        answer=answer,
        weight_bytes=weights_as_loaded(system, rendered.config["engine"]["dtype"]),
        rss_serving=rss_serving,
        rss_after=rss_after,
        tokens_per_s=tokens / seconds,
        ttft_p50_s=percentile(ttfts, 0.5),
    )


def print_summary(results: dict[str, list[Result]]) -> None:
    mib = 2**20

    def median(name: str, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[name])

    print("\nsystem     weights MiB  RSS serving MiB  RSS after MiB  tok/s   TTFT p50 ms  answer")
    for name, rows in results.items():
        print(
            f"{name:10} {median(name, 'weight_bytes') / mib:11.0f}"
            f"  {median(name, 'rss_serving') / mib:15.0f}  {median(name, 'rss_after') / mib:13.0f}"
            f"  {median(name, 'tokens_per_s'):6.0f}  {median(name, 'ttft_p50_s') * 1000:11.0f}"
            f"  {rows[-1].answer!r}"
        )
    for base in ("bf16", "bf16-bf16"):
        ratios = {
            label: median("int8", field) / median(base, field)
            for label, field in (
                ("weights", "weight_bytes"),
                ("RSS", "rss_after"),
                ("tokens/s", "tokens_per_s"),
                ("TTFT p50", "ttft_p50_s"),
            )
        }
        print(f"int8 / {base}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--waves", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[Result]] = {s.name: [] for s in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="bench-quantized-") as tmp:
        for round_number in range(args.rounds):
            for system in SYSTEMS:
                work = Path(tmp) / f"{system.name}-{round_number}"
                work.mkdir()
                result = measure(system, args, work)
                results[system.name].append(result)
                print(f"round {round_number + 1} {system.name}: {result}", flush=True)
    print_summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
