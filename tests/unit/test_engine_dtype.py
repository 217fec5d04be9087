"""`engine.dtype: auto` on a CPU: float32 unless the CPU computes bfloat16 natively."""

from __future__ import annotations

import platform

import pytest

from zarf_vllm.backend.engine import cpu_flags, resolve_dtype

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


def test_auto_on_a_cpu_without_native_bf16_is_float32() -> None:
    assert resolve_dtype("auto", on_cpu=True, quantized=False, flags=AVX2_ONLY) == "float32"


def test_auto_on_a_cpu_with_native_bf16_is_left_to_vllm() -> None:
    assert resolve_dtype("auto", on_cpu=True, quantized=False, flags=SAPPHIRE_RAPIDS) == "auto"


@pytest.mark.parametrize("requested", ["bfloat16", "float16", "float32"])
def test_an_explicit_dtype_is_kept(requested: str) -> None:
    assert resolve_dtype(requested, on_cpu=True, quantized=False, flags=AVX2_ONLY) == requested


def test_gpus_and_quantized_models_keep_auto() -> None:
    assert resolve_dtype("auto", on_cpu=False, quantized=False, flags=AVX2_ONLY) == "auto"
    assert resolve_dtype("auto", on_cpu=True, quantized=True, flags=AVX2_ONLY) == "auto"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 flag names")
def test_this_hosts_flags_are_read() -> None:
    # sse2 is part of the x86-64 baseline, so every such host lists it.
    assert "sse2" in cpu_flags()
