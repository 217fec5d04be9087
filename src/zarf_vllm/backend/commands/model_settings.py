"""What `serve` and `worker` share before their engine starts: command-line flags as settings
overrides, and the model directory checked against its manifest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zarf_vllm.backend.config import Settings
    from zarf_vllm.model.manifest import ModelManifest


def flag_overrides(flags: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """{(section, key): flag value} as nested settings overrides; flags left unset are not."""
    overrides: dict[str, Any] = {}
    for (section, key), value in flags.items():
        if value is not None:
            overrides.setdefault(section, {})[key] = value
    return overrides


def checked_model(settings: Settings) -> ModelManifest | None:
    """The model's manifest, after checking its directory and (model.verify) its weights;
    raises ConfigError naming the problem."""
    from zarf_vllm.backend.config import load_model_manifest
    from zarf_vllm.backend.runtime import check_model_directory, verify_weights

    assert settings.model.path is not None
    check_model_directory(settings.model.path)
    manifest = load_model_manifest(settings)
    verify_weights(settings, manifest)
    return manifest
