"""What the services need once the model is loaded, and how it is assembled from Settings.

The gRPC server starts before the engine (so health checks answer NOT_SERVING while weights
load), and services reach the engine through `Runtime`, which is filled in when loading ends.
The call tracker refuses calls until then, so a service never sees an empty runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from zarf_vllm.backend.config import ChatSettings, ConfigError, SamplingSettings, Settings
from zarf_vllm.backend.engine import Engine
from zarf_vllm.backend.generation import Generator
from zarf_vllm.backend.prompts import ChatPromptBuilder
from zarf_vllm.backend.sampling import Limits
from zarf_vllm.model.manifest import ModelManifest


@dataclass
class Runtime:
    """Filled in by `load()`, before the warm-up request (readiness is the call tracker's
    `accepting` and the health status, set once the warm-up has been served)."""

    engine: Engine | None = None
    generator: Generator | None = None
    prompts: ChatPromptBuilder | None = None

    def require_engine(self) -> Engine:
        assert self.engine is not None, "calls are refused until the model is loaded"
        return self.engine

    def require_generator(self) -> Generator:
        assert self.generator is not None, "calls are refused until the model is loaded"
        return self.generator

    def require_prompts(self) -> ChatPromptBuilder:
        assert self.prompts is not None, "calls are refused until the model is loaded"
        return self.prompts


def check_model_directory(path: Path) -> None:
    """Fails fast, before the engine starts, on a directory that cannot hold a model."""
    if not path.exists():
        raise ConfigError(f"model directory {path} does not exist: pass --model DIR")
    if not path.is_dir():
        raise ConfigError(f"model path {path} is not a directory: pass the model's directory")
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(
            f"model directory {path} has no config.json: point --model at a Hugging Face-style "
            "model directory (config.json, weights, tokenizer)"
        )
    try:
        json.loads(config.read_text())
    except ValueError as exc:
        raise ConfigError(f"{config} is not valid JSON: {exc}") from exc


def verify_weights(settings: Settings, manifest: ModelManifest | None) -> None:
    """With model.verify on, refuses to serve weights that differ from the manifest."""
    mode = settings.model.verify
    if mode == "off":
        return
    if manifest is None:
        raise ConfigError(
            f"model.verify={mode} needs the model's manifest: pass --manifest FILE "
            "or set BACKEND_MODEL__MANIFEST"
        )
    from zarf_vllm.model.errors import WeightsError
    from zarf_vllm.model.verify import verify_directory

    assert settings.model.path is not None
    try:
        verify_directory(settings.model.path, manifest, mode)
    except WeightsError as exc:
        raise ConfigError(
            f"refusing to serve {settings.model.path}: {exc}. The weights differ from manifest "
            f"{manifest.id}; restore them from the package (or re-run the pull)"
        ) from exc


def is_embedding_model(settings: Settings, manifest: ModelManifest | None) -> bool:
    """The task: from the settings, else the manifest, else the model directory's files."""
    if settings.model.task != "auto":
        return settings.model.task == "embed"
    if manifest is not None:
        return manifest.task == "embed"
    assert settings.model.path is not None
    # sentence-transformers directories describe their pooling in modules.json.
    return (settings.model.path / "modules.json").is_file()


def served_name(settings: Settings, manifest: ModelManifest | None) -> str:
    if settings.model.name:
        return settings.model.name
    if manifest is not None:
        return manifest.id
    assert settings.model.path is not None
    return settings.model.path.resolve().name


def sampling_defaults(settings: Settings, manifest: ModelManifest | None) -> SamplingSettings:
    """The settings' values where set, else the manifest's, else the settings' defaults."""
    configured = settings.sampling
    if manifest is None:
        return configured
    from_manifest = manifest.sampling.model_dump(exclude_none=True)
    merged = {**from_manifest, **configured.model_dump(include=configured.model_fields_set)}
    return SamplingSettings.model_validate({**configured.model_dump(), **merged})


# The sampling defaults that also mean the same in OpenAI requests (max_new_tokens does not:
# an OpenAI request without max_tokens runs to a stop or the end of the context).
_OPENAI_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty")


def openai_sampling_defaults(
    settings: Settings, manifest: ModelManifest | None
) -> dict[str, float | int]:
    """The same defaults as the gRPC side's, for the OpenAI API's requests (vLLM reads them as
    its generation config), so both APIs sample alike where a client leaves a field unset."""
    defaults = sampling_defaults(settings, manifest).model_dump(
        include=set(_OPENAI_SAMPLING_FIELDS)
    )
    return {key: value for key, value in defaults.items() if value is not None}


def chat_settings(settings: Settings, manifest: ModelManifest | None) -> ChatSettings:
    """The manifest's chat format and stop strings, unless the settings say otherwise."""
    configured = settings.chat
    if manifest is None:
        return configured
    from_manifest: dict[str, object] = {"stop": list(manifest.chat.stop)}
    if manifest.chat.template == "formats":
        formats = manifest.chat.formats
        from_manifest.update(
            use_tokenizer_template=False,
            system_format=formats.system,
            user_format=formats.user,
            assistant_format=formats.assistant,
            generation_prompt=formats.generation_prompt,
        )
    explicit = configured.model_dump(include=configured.model_fields_set)
    return ChatSettings.model_validate({**configured.model_dump(), **from_manifest, **explicit})


def assemble(
    runtime: Runtime, engine: Engine, settings: Settings, manifest: ModelManifest | None
) -> None:
    """Fills the runtime with the loaded engine and the objects built around it."""
    chat = chat_settings(settings, manifest)
    limits = Limits(
        max_model_len=engine.facts.max_model_len,
        vocab_size=engine.facts.vocab_size,
        max_n=settings.limits.max_n,
        max_stop_sequences=settings.limits.max_stop_sequences,
        per_request_seed=engine.facts.per_request_seed,
    )
    runtime.engine = engine
    runtime.generator = Generator(
        engine,
        sampling_defaults(settings, manifest),
        limits,
        extra_stop=list(chat.stop),
        stream_interval_s=settings.server.stream_interval_ms / 1000,
    )
    runtime.prompts = ChatPromptBuilder(engine.tokenizer, chat)
