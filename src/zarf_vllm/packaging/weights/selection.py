"""Which files of a model repository a manifest records, when it names no patterns itself.

Enough to serve the model with vLLM and nothing else: config, tokenizer, chat template,
sentence-transformers pooling files, and the weights in one format (safetensors when the
repository has them, else PyTorch .bin). Original or consolidated checkpoints that some
repositories carry besides the Hugging Face format (Llama's original/, Mistral's
consolidated.safetensors) are left out: they would double the bytes that cross the air gap.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

METADATA_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "quant_config.json",
    "quantize_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "[0-9]_Pooling/config.json",
    "[0-9]_Dense/config.json",
    "[0-9]_Dense/model.safetensors",
)
SAFETENSORS_PATTERNS = ("*.safetensors", "model.safetensors.index.json")
PYTORCH_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
EXCLUDED_PATTERNS = ("original/*", "consolidated*", "*/consolidated*", ".*", "*/.*")

# A LoRA adapter's directory as vLLM loads it: adapter_config.json (PEFTHelper.from_local_dir,
# vllm/lora/peft_helper.py) and the weights from adapter_model.safetensors, else the pickles
# adapter_model.bin or adapter_model.pt (LoRAModel.from_local_checkpoint,
# vllm/lora/lora_model.py). Only safetensors are recorded: a pickle can run code when loaded.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLES = ("adapter_model.bin", "adapter_model.pt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(path, pattern) for pattern in patterns)


def select_files(paths: Iterable[str], include: Iterable[str] | None = None) -> list[str]:
    """The sorted subset of `paths` to record: `include` globs if given, else the default."""
    paths = sorted(set(paths))
    if include is not None:
        patterns = list(include)
        return [p for p in paths if _matches(p, patterns)]
    candidates = [p for p in paths if not _matches(p, EXCLUDED_PATTERNS)]
    has_safetensors = any(fnmatchcase(p, "*.safetensors") for p in candidates)
    weights = SAFETENSORS_PATTERNS if has_safetensors else PYTORCH_PATTERNS
    return [p for p in candidates if _matches(p, (*METADATA_PATTERNS, *weights))]


def select_adapter_files(paths: Iterable[str], include: Iterable[str] | None = None) -> list[str]:
    """The sorted subset of an adapter's `paths` to record: `include` globs if given, else
    its config and safetensors weights."""
    paths = sorted(set(paths))
    patterns = list(include) if include is not None else [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    return [p for p in paths if _matches(p, patterns)]
