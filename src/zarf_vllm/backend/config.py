"""The backend's configuration: one typed source of truth, read once at start-up.

Values come from, highest precedence first: command-line flags, environment variables
(`BACKEND_` prefix, `__` between levels: `BACKEND_ENGINE__MAX_MODEL_LEN=4096`), a YAML file
(`--config FILE` or `BACKEND_CONFIG`), then the defaults below. Unknown keys are an error
everywhere, so a typo never silently does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from zarf_vllm.model.manifest import ManifestError, ModelManifest, load_manifest

ENV_PREFIX = "BACKEND_"
CONFIG_FILE_ENV = "BACKEND_CONFIG"


class ConfigError(ValueError):
    """A setting that is missing or invalid; the message names it and what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    path: Annotated[Path | None, Field(description="Directory with config.json and weights")] = None
    name: Annotated[
        str | None, Field(description="Name reported by NameService; default: manifest id or dir")
    ] = None
    manifest: Annotated[
        Path | None, Field(description="Model manifest: sampling defaults, chat format, checks")
    ] = None
    verify: Annotated[
        Literal["off", "size", "full"],
        Field(description="Check the weights against the manifest before serving"),
    ] = "off"
    task: Annotated[
        Literal["auto", "generate", "embed"],
        Field(description="auto: the manifest's task, else generate"),
    ] = "auto"


class EngineSettings(_Section):
    """vLLM engine arguments; None means vLLM's own default."""

    dtype: str = "auto"
    max_model_len: Annotated[int | None, Field(gt=0)] = None
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    data_parallel_size: Annotated[
        int, Field(ge=1, description="Engines of tensor_parallel_size GPUs each (vLLM's DP)")
    ] = 1
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    max_num_seqs: Annotated[int | None, Field(gt=0)] = None
    max_num_batched_tokens: Annotated[int | None, Field(gt=0)] = None
    enforce_eager: Annotated[
        bool | None,
        Field(
            description="Skip torch.compile (and CUDA graphs); null: eager on the CPU, "
            "compiled on GPUs (engine.resolve_enforce_eager)"
        ),
    ] = None
    quantization: Annotated[
        str | None,
        Field(
            description="What vLLM quantizes the weights to as it loads them: fp8 (QUANTIZATION; "
            "a 16-bit checkpoint's linear layers, on GPUs with FP8) or another vLLM method name; "
            "null: the checkpoint as it was saved (vLLM reads a pre-quantized one's method)"
        ),
    ] = None
    kv_cache_dtype: str = "auto"
    enable_prefix_caching: bool | None = None
    trust_remote_code: bool = False
    seed: int = 0
    cpu_kvcache_space_gib: Annotated[
        int | None, Field(gt=0, description="KV cache size on the CPU (VLLM_CPU_KVCACHE_SPACE)")
    ] = None
    enable_lora: Annotated[
        bool | None,
        Field(description="Serve the manifest's LoRA adapters; null: on when it lists any"),
    ] = None
    max_loras: Annotated[
        int | None,
        Field(gt=0, description="Adapters in one batch (vLLM max_loras); null: all of them"),
    ] = None
    max_lora_rank: Annotated[
        int | None,
        Field(
            gt=0,
            description="Largest adapter rank (vLLM max_lora_rank); null: the manifest's "
            "largest, rounded up to a rank vLLM accepts",
        ),
    ] = None

    # Several nodes (vLLM's own multi-node support, its `mp` executor, no Ray): the layers are
    # split into pipeline_parallel_size stages, tensor parallel inside each node. Node 0 (the
    # leader, `serve`) runs the engine and the API; nodes 1.. run `worker`. Every node reads the
    # same settings but its own node_rank.
    pipeline_parallel_size: Annotated[
        int, Field(ge=1, description="Pipeline stages; across nodes, one per node")
    ] = 1
    nnodes: Annotated[int, Field(ge=1, description="Nodes the engine spans (leader included)")] = 1
    node_rank: Annotated[int, Field(ge=0, description="This node: 0 is the leader")] = 0
    master_addr: Annotated[
        str, Field(description="The leader's address, which every node's ranks rendezvous at")
    ] = "127.0.0.1"
    master_port: Annotated[
        int, Field(ge=1, le=65535, description="The leader's torch.distributed port")
        # vLLM's own default (ParallelConfig.master_port).
    ] = 29501

    @model_validator(mode="after")
    def _node_rank_in_range(self) -> EngineSettings:
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"node_rank {self.node_rank} is not below nnodes {self.nnodes}: the nodes are "
                "numbered 0 (the leader) to nnodes - 1"
            )
        return self


class SamplingSettings(_Section):
    """Defaults for request fields the client leaves unset."""

    max_new_tokens: Annotated[int, Field(gt=0)] = 256
    temperature: Annotated[float | None, Field(ge=0)] = None
    top_p: Annotated[float | None, Field(gt=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=-1)] = None
    repetition_penalty: Annotated[float | None, Field(gt=0)] = None


class ChatSettings(_Section):
    """How chat items become a prompt when the tokenizer has no chat template."""

    use_tokenizer_template: bool = True
    system_format: str = "{content}\n"
    user_format: str = "User: {content}\n"
    assistant_format: str = "Assistant: {content}\n"
    generation_prompt: str = "Assistant: "
    stop: list[str] = []


class LimitSettings(_Section):
    max_in_flight: Annotated[
        int, Field(gt=0, description="Requests served at once; past it RESOURCE_EXHAUSTED")
    ] = 256
    max_n: Annotated[int, Field(gt=0, description="Largest n (choices per request)")] = 8
    max_stop_sequences: Annotated[int, Field(gt=0)] = 16
    max_embedding_inputs: Annotated[
        int, Field(gt=0, description="Strings per CreateEmbedding call; past it INVALID_ARGUMENT")
        # LeapfrogAI's RAG indexing sends up to 500 per call. 2048 admits that four times over,
        # and still bounds one call's answer: 2048 vectors of 4096 floats (the widest common
        # embedding models) are 32 MiB, half the server's 64 MiB message limit.
    ] = 2048
    embedding_overflow: Annotated[
        Literal["truncate", "refuse"],
        Field(
            description="An embedding input longer than the model's limit: truncate keeps its "
            "first tokens (as sentence-transformers does), refuse answers INVALID_ARGUMENT"
        ),
    ] = "truncate"
    drain_timeout_s: Annotated[
        float, Field(ge=0, description="On SIGTERM, how long calls in flight may finish")
    ] = 30.0


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 50051
    metrics_port: Annotated[
        int | None, Field(ge=0, le=65535, description="Prometheus port; null disables")
    ] = 9090
    openai_port: Annotated[
        int | None,
        Field(ge=0, le=65535, description="OpenAI-compatible HTTP API's port; null disables"),
    ] = 8000
    warmup: Annotated[bool, Field(description="Serve one request before reporting SERVING")] = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_prompts: Annotated[bool, Field(description="Include prompt text in request logs")] = False
    engine_check_interval_s: Annotated[float, Field(gt=0)] = 5.0
    stream_interval_ms: Annotated[
        float,
        Field(
            ge=0,
            description="Send a stream's chunks at most this often (0: every token); tokens "
            "that arrive in between go out together. The first token is never held back.",
        ),
        # 50 ms (20 updates a second, smooth to a reader): bench/serving.py measured, at 32 and
        # 128 streams, 0.60-0.84x the raw engine's throughput against 0.56-0.66x with 10 ms,
        # and the time-to-first-token p99 of a 128-stream burst down from 2.2-2.4 s to 0.6-0.8 s.
    ] = 50.0
    api_processes: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="Front-end processes serving the same ports (SO_REUSEPORT: the kernel "
            "spreads connections over them), each a client of the one engine, as vLLM's "
            "--api-server-count does; for GPU nodes where one Python process cannot keep up "
            "with the engine. Each costs a process and its memory, and limits.max_in_flight "
            "is split between them. 1: one process with the engine's client in it",
        ),
    ] = 1


class OpenAISettings(_Section):
    """The OpenAI-compatible HTTP API (its port is `server.openai_port`)."""

    api_key: Annotated[
        SecretStr | None,
        Field(
            description="Bearer key every /v1 call must send; null: no key "
            "(BACKEND_OPENAI__API_KEY, which the chart fills from a Secret)",
        ),
    ] = None

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, key: SecretStr | None) -> SecretStr | None:
        # An empty Secret must not quietly open the API to everyone.
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("is empty: give the key, or leave it unset for an API without one")
        return key


class TLSSettings(_Section):
    """TLS on the gRPC and OpenAI ports (docs/tls.md); off while cert_file and key_file are unset.

    The file names are those of a kubernetes.io/tls Secret (cert-manager's): tls.crt, tls.key
    and ca.crt. The metrics port stays plain HTTP.
    """

    cert_file: Annotated[
        Path | None, Field(description="PEM certificate chain the server presents (tls.crt)")
    ] = None
    key_file: Annotated[
        Path | None, Field(description="PEM private key of cert_file, unencrypted (tls.key)")
    ] = None
    client_ca_file: Annotated[
        Path | None,
        Field(description="PEM CA certificates that sign the clients' certificates (ca.crt)"),
    ] = None
    require_client_cert: Annotated[
        bool,
        Field(description="Mutual TLS: refuse clients without a certificate client_ca_file signed"),
    ] = False
    health_port: Annotated[
        int | None,
        Field(
            ge=0,
            le=65535,
            description="With TLS: a plaintext port serving only grpc.health.v1.Health, for "
            "kubelet's gRPC probes (which cannot speak TLS); null: none",
        ),
    ] = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _consistent(self) -> TLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "cert_file and key_file go together: set both to serve TLS, or neither"
            )
        if self.require_client_cert and self.client_ca_file is None:
            raise ValueError(
                "require_client_cert needs client_ca_file, the CA that signs client certificates"
            )
        if self.client_ca_file is not None and not self.require_client_cert:
            # Neither gRPC's nor uvicorn's server checks an optional client certificate the
            # same way: a CA that nothing enforces would only look like security.
            raise ValueError(
                "client_ca_file is only used with require_client_cert: true; set it, "
                "or remove client_ca_file"
            )
        if self.client_ca_file is not None and not self.enabled:
            raise ValueError("client_ca_file needs cert_file and key_file: mutual TLS is TLS")
        if self.health_port is not None and not self.enabled:
            raise ValueError(
                "health_port is only for TLS (without it, the gRPC port answers health checks); "
                "remove it, or set cert_file and key_file"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    model: ModelSettings = ModelSettings()
    engine: EngineSettings = EngineSettings()
    sampling: SamplingSettings = SamplingSettings()
    chat: ChatSettings = ChatSettings()
    limits: LimitSettings = LimitSettings()
    server: ServerSettings = ServerSettings()
    openai: OpenAISettings = OpenAISettings()
    tls: TLSSettings = TLSSettings()

    @model_validator(mode="after")
    def _model_path_given(self) -> Settings:
        if self.model.path is None:
            raise ValueError("model.path is required: pass --model DIR or set BACKEND_MODEL__PATH")
        return self

    @model_validator(mode="after")
    def _api_processes_on_one_node(self) -> Settings:
        # The front ends are clients of engine cores this node starts; a model served across
        # nodes starts its engine through vLLM's multi-node executor, which no front-end
        # process of ours has been run against.
        if self.server.api_processes > 1 and self.engine.nnodes > 1:
            raise ValueError(
                f"server.api_processes {self.server.api_processes} and engine.nnodes "
                f"{self.engine.nnodes} do not go together: several front-end processes are "
                "for a model served on one node; set server.api_processes to 1"
            )
        return self


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Builds the one Settings object: flags > environment > file > defaults.

    `overrides` holds the command-line flags as nested dicts ({"server": {"port": 1}}).
    Raises ConfigError with one readable line per problem.
    """
    if config_file is None and os.environ.get(CONFIG_FILE_ENV):
        config_file = Path(os.environ[CONFIG_FILE_ENV])
    if config_file is not None:
        _check_config_file(config_file)
    _check_env_names()

    class _LayeredSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # Earlier sources win; pydantic-settings deep-merges the sections.
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    try:
        return _LayeredSettings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_file)) from exc


def _check_env_names() -> None:
    """pydantic-settings ignores unknown top-level names; a typo there must not pass."""
    sections = {name.upper() for name in Settings.model_fields}
    for name in os.environ:
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        section = name[len(ENV_PREFIX) :].split("__", 1)[0]
        if section not in sections or "__" not in name[len(ENV_PREFIX) :]:
            raise ConfigError(
                f"environment variable {name} is not a setting: use {ENV_PREFIX}<SECTION>__<KEY> "
                f"with SECTION one of {sorted(sections)}"
            )


def _check_config_file(path: Path) -> None:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a YAML mapping")


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    where = f" (config file {config_file}, environment {ENV_PREFIX}*, flags)" if config_file else ""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting; check the spelling against `backend serve --help`"
        problems.append(f"{location}: {message}")
    return "invalid configuration" + where + ": " + "; ".join(problems)


def load_model_manifest(settings: Settings) -> ModelManifest | None:
    """The manifest named by the settings, if any (read once at start-up)."""
    if settings.model.manifest is None:
        return None
    try:
        return load_manifest(settings.model.manifest)
    except ManifestError as exc:
        raise ConfigError(str(exc)) from exc
