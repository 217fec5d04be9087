"""Settings: one typed source, flags > environment > file > defaults, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from support.paths import REPO
from zarf_vllm.backend.config import ConfigError, load_settings
from zarf_vllm.backend.runtime import chat_settings, sampling_defaults
from zarf_vllm.model.manifest import load_manifest

ROOT = REPO


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BACKEND_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_precedence_is_flags_then_environment_then_file(tmp_path, monkeypatch) -> None:
    config = write(
        tmp_path,
        {
            "model": {"path": "/file"},
            "server": {"port": 1, "metrics_port": 2, "log_level": "DEBUG"},
        },
    )
    monkeypatch.setenv("BACKEND_SERVER__PORT", "10")
    monkeypatch.setenv("BACKEND_SERVER__METRICS_PORT", "20")
    settings = load_settings(config, {"server": {"metrics_port": 200}})
    assert settings.server.port == 10  # environment over file
    assert settings.server.metrics_port == 200  # flag over environment
    assert settings.server.log_level == "DEBUG"  # file over default
    assert str(settings.model.path) == "/file"
    assert settings.engine.trust_remote_code is False  # default


def test_config_file_from_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BACKEND_CONFIG", str(write(tmp_path, {"model": {"path": "/m"}})))
    assert str(load_settings().model.path) == "/m"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"engine": {"max_model_len": 0}}, "engine.max_model_len"),
        ({"engine": {"data_parallel_size": 0}}, "engine.data_parallel_size"),
        ({"engine": {"gpu_memory_utilization": 2}}, "engine.gpu_memory_utilization"),
        ({"limits": {"max_in_flight": -1}}, "limits.max_in_flight"),
        ({"sampling": {"top_p": 0}}, "sampling.top_p"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"servr": {}}, "servr: unknown setting"),
        ({"engine": {"tensor_paralel_size": 2}}, "engine.tensor_paralel_size: unknown setting"),
    ],
)
def test_invalid_values_are_named(tmp_path, data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_settings(write(tmp_path, {"model": {"path": "/m"}, **data}))


def test_unreadable_files_are_explained(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_settings(bad)


def test_unknown_environment_names_are_refused(monkeypatch) -> None:
    monkeypatch.setenv("BACKEND_MODEL__PATH", "/m")
    monkeypatch.setenv("BACKEND_PORT", "1")
    with pytest.raises(ConfigError, match="BACKEND_PORT is not a setting"):
        load_settings()


def test_manifest_fills_what_the_settings_leave_unset(tmp_path) -> None:
    manifest = load_manifest(ROOT / "model-manifests" / "smollm2-135m-instruct.yaml")
    settings = load_settings(write(tmp_path, {"model": {"path": "/m"}, "sampling": {"top_p": 0.5}}))
    defaults = sampling_defaults(settings, manifest)
    assert defaults.top_p == 0.5  # set in the settings: kept
    expected_temperature = manifest.sampling.temperature
    assert defaults.temperature == expected_temperature  # unset: the manifest's
    assert chat_settings(settings, manifest).stop == list(manifest.chat.stop)


def test_the_openai_key_comes_from_the_environment_and_never_shows(monkeypatch) -> None:
    overrides = {"model": {"path": "/m"}}
    settings = load_settings(None, overrides)
    assert settings.server.openai_port == 8000 and settings.openai.api_key is None
    monkeypatch.setenv("BACKEND_OPENAI__API_KEY", "s3cret-key")
    settings = load_settings(None, overrides)
    assert settings.openai.api_key is not None
    assert settings.openai.api_key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(settings) and "s3cret-key" not in str(settings.model_dump())
    monkeypatch.setenv("BACKEND_OPENAI__API_KEY", " ")
    with pytest.raises(ConfigError, match=r"openai\.api_key: .*is empty"):
        load_settings(None, overrides)


def test_the_openai_api_samples_with_the_same_defaults(monkeypatch) -> None:
    from support.paths import DEMO_MANIFEST
    from zarf_vllm.backend.engine import engine_args
    from zarf_vllm.backend.runtime import openai_sampling_defaults

    demo = load_manifest(DEMO_MANIFEST)
    settings = load_settings(None, {"model": {"path": "/m"}, "sampling": {"top_k": 40}})
    defaults = openai_sampling_defaults(settings, demo)
    # The manifest's temperature and top_p, the settings' top_k; never max_new_tokens, which
    # OpenAI requests leave open on purpose.
    assert defaults == {"temperature": 0.2, "top_p": 0.9, "top_k": 40}
    args = engine_args(settings, False, "float32", defaults, on_cpu=True)
    assert args["override_generation_config"] == defaults
    no_defaults = engine_args(settings, False, "float32", {}, on_cpu=True)
    assert "override_generation_config" not in no_defaults


def test_the_quantization_reaches_vllm_by_its_own_name() -> None:
    from zarf_vllm.backend.engine import engine_args

    def quantization(value: str | None) -> object:
        settings = load_settings(None, {"model": {"path": "/m"}, "engine": {"quantization": value}})
        return engine_args(settings, False, "auto", on_cpu=False).get("quantization", "unset")

    # fp8 (QUANTIZATION) is vLLM 0.32's online FP8, fp8_per_tensor; other names pass as they are.
    assert quantization("fp8") == "fp8_per_tensor"
    assert quantization("awq") == "awq"
    assert quantization(None) == "unset"  # the checkpoint's own: vLLM reads its config.json
