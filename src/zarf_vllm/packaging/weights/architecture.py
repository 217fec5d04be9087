"""Check a model directory's config.json (and safetensors headers, and a sentence-transformers
config) against the manifest.

The sizing and the chart trust the manifest's architecture facts; this check makes sure the
bytes that actually arrived are that model. Every disagreement is listed in one error.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from zarf_vllm.model.errors import ArchitectureMismatchError
from zarf_vllm.model.manifest import ADAPTERS_DIR, Architecture, ModelManifest, Quantization

# tie_word_embeddings defaults of the transformers config classes, for configs that omit it.
TIED_DEFAULTS = {
    "llama": False,
    "mistral": False,
    "mixtral": False,
    "qwen2": False,
    "qwen3": False,
    "gemma": True,
    "gemma2": True,
    "gemma3_text": True,
    "phi3": False,
    "bert": True,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
PARAMETER_TOLERANCE = 0.01  # published counts are rounded (e.g. "7.62B")
# The sentence-transformers configs vLLM 0.32 reads, in its order
# (vllm/transformers_utils/config.py, get_sentence_transformer_tokenizer_config): the first
# present, non-empty one decides, and its max_seq_length replaces the length vLLM derives from
# config.json, so a max_model_len above it is refused at start-up (all-MiniLM-L6-v2: 256, while
# config.json has 512 positions). The manifest's max_sequence_length must say the same, because
# the sizing caps max_model_len with it.
SENTENCE_CONFIG_FILES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)


def _first(config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def config_facts(config: dict[str, Any]) -> dict[str, Any]:
    """The manifest's architecture fields as config.json states them (None: not stated)."""
    text = {**config, **config.get("text_config", {})} if "text_config" in config else config
    model_type = config.get("model_type")
    heads = _first(text, "num_attention_heads", "n_head")
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    kv_heads = _first(text, "num_key_value_heads") or heads
    head_dim = _first(text, "head_dim")
    if head_dim is None and hidden and heads:
        head_dim = hidden // heads
    tied = _first(config, "tie_word_embeddings")
    if tied is None:
        tied = TIED_DEFAULTS.get(str(model_type))
    return {
        "model_type": model_type,
        "layers": _first(text, "num_hidden_layers", "n_layer", "num_layers"),
        "hidden_size": hidden,
        "intermediate_size": _first(text, "intermediate_size"),
        "attention_heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": _first(text, "vocab_size"),
        "max_position_embeddings": _first(text, "max_position_embeddings", "n_positions"),
        "weight_dtype": _first(config, "torch_dtype", "dtype") or _first(text, "torch_dtype"),
        "tied_embeddings": tied,
    }


def _quantization_problems(config: dict[str, Any], expected: Quantization) -> list[str]:
    qconfig = config.get("quantization_config")
    method = str(qconfig.get("quant_method", "")).lower() if qconfig else "none"
    if method != expected.method:
        return [f"quantization method is {method!r}, the manifest says {expected.method!r}"]
    bits = qconfig.get("bits") if qconfig else None
    if bits is not None and expected.bits is not None and bits != expected.bits:
        return [f"quantization bits is {bits}, the manifest says {expected.bits}"]
    return []


def safetensors_parameters(directory: Path) -> int | None:
    """Floating-point elements in every *.safetensors file (headers only); None: no files.
    The LoRA adapters' files (adapters/) are not the model's parameters."""
    total, found = 0, False
    for path in sorted(directory.rglob("*.safetensors")):
        if path.relative_to(directory).parts[0] == ADAPTERS_DIR:
            continue
        found = True
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        total += sum(
            math.prod(t["shape"])
            for name, t in header.items()
            if name != "__metadata__" and t["dtype"] in FLOAT_DTYPES
        )
    return total if found else None


def architecture_problems(
    config: dict[str, Any], expected: Architecture, quantization: Quantization
) -> list[str]:
    problems = []
    for name, actual in config_facts(config).items():
        want = getattr(expected, name)
        want = want.value if hasattr(want, "value") else want
        if actual is not None and actual != want:
            problems.append(f"{name} is {actual!r}, the manifest says {want!r}")
    return problems + _quantization_problems(config, quantization)


def sequence_length_problems(directory: Path, expected: Architecture) -> list[str]:
    """The sentence-transformers config's max_seq_length against the manifest's
    max_sequence_length, for the file vLLM would read; nothing when the directory has none."""
    for name in SENTENCE_CONFIG_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            sentence_config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return [f"{name}: cannot read it: {exc}"]
        if not isinstance(sentence_config, dict):
            return [f"{name}: not a JSON object"]
        if not sentence_config:
            continue  # vLLM skips an empty one and reads the next
        want = expected.max_sequence_length
        if "max_seq_length" not in sentence_config:
            # vLLM then keeps config.json's length; a shorter manifest limit would only
            # under-size the context, but it is still a fact the directory does not state.
            if want is None:
                return []
            return [f"{name} sets no max_seq_length, the manifest says max_sequence_length {want}"]
        actual = sentence_config["max_seq_length"]
        if actual != want:
            return [f"max_sequence_length is {actual!r} ({name}), the manifest says {want!r}"]
        return []
    return []


def check_architecture(directory: Path | str, manifest: ModelManifest) -> None:
    """Raises `ArchitectureMismatchError` naming every fact config.json contradicts, and a
    sentence-transformers max_seq_length that differs from max_sequence_length; for an
    unquantized model also the parameter count read from the safetensors headers."""
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ArchitectureMismatchError(f"{config_path}: cannot read config.json: {exc}") from exc
    problems = architecture_problems(config, manifest.architecture, manifest.quantization)
    problems += sequence_length_problems(directory, manifest.architecture)
    if manifest.quantization.method == "none":
        counted = safetensors_parameters(directory)
        want = manifest.architecture.parameters
        if counted is not None and abs(counted - want) > PARAMETER_TOLERANCE * want:
            problems.append(f"parameters is {counted} (safetensors), the manifest says {want}")
    if problems:
        raise ArchitectureMismatchError(
            f"{config_path}: does not match manifest {manifest.id!r}: " + "; ".join(problems)
        )
