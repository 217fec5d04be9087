"""`engine.dtype: auto` on a CPU is the sizing's CPU dtype, the one the chart renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zarf_vllm.backend.engine import checkpoint_is_quantized, resolve_dtype
from zarf_vllm.model import sizing


def test_auto_on_a_cpu_is_float32_whatever_the_cpu() -> None:
    # One answer on AVX2-only hosts and on hosts with native bfloat16 alike.
    assert resolve_dtype("auto", on_cpu=True, quantized=False) == "float32"
    assert sizing.cpu_dtype(quantized=False) == "float32"


@pytest.mark.parametrize("requested", ["bfloat16", "float16", "float32"])
def test_an_explicit_dtype_is_kept(requested: str) -> None:
    assert resolve_dtype(requested, on_cpu=True, quantized=False) == requested


def test_gpus_and_quantized_models_keep_auto() -> None:
    assert resolve_dtype("auto", on_cpu=False, quantized=False) == "auto"
    assert resolve_dtype("auto", on_cpu=True, quantized=True) == "auto"


def test_a_pre_quantized_checkpoint_is_known_by_its_config_json(tmp_path: Path) -> None:
    # The INT8 demo with QUANTIZATION unset: config.json's quantization_config alone must keep
    # it at "auto", since float32 stops vLLM-CPU's INT8 kernel on AMX CPUs (sizing.cpu_dtype).
    plain, quantized = tmp_path / "plain", tmp_path / "quantized"
    for directory, extra in ((plain, {}), (quantized, {"quantization_config": {}})):
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps({"model_type": "llama", **extra}))
    assert not checkpoint_is_quantized(plain)
    assert checkpoint_is_quantized(quantized)
    assert not checkpoint_is_quantized(None)
    assert not checkpoint_is_quantized(tmp_path / "missing")


def test_the_chart_renders_the_dtype_the_engine_resolves() -> None:
    smollm2 = sizing.ModelFacts(
        id="m", task="generate", quantization="none", weight_dtype="bfloat16",
        weight_bytes=10**8, layers=2, attention_heads=4, kv_heads=2, head_dim=64,
        hidden_size=256, intermediate_size=512, vocab_size=1000, max_positions=8192,
    )
    costs = sizing.costs_for(smollm2, "cpu")
    assert costs.dtype == resolve_dtype("auto", on_cpu=True, quantized=False)
    # float32 from bfloat16 weights: twice the bytes in memory, 4 bytes per KV value.
    assert costs.weight_bytes == 2 * 10**8
    assert costs.kv_bytes["auto"] == 2 * 2 * 2 * 64 * 4
