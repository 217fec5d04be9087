"""Which adapters the backend serves, the engine arguments they become, and the names vLLM's
OpenAI layer is given (pure logic; tests/engine/test_lora.py serves them on the real engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.hf_fixtures import local_manifest, tiny_model_files, write_files
from zarf_vllm.backend.adapters import ServedAdapter, adapter_port, served_adapters
from zarf_vllm.backend.config import ConfigError, EngineSettings, Settings
from zarf_vllm.backend.engine import engine_args, lora_args
from zarf_vllm.backend.openai.serving import frontend_args
from zarf_vllm.model.lora import VLLM_LORA_RANKS, lora_rank
from zarf_vllm.model.manifest import Adapter, LocalSource, ModelManifest, adapter_dir


def manifest_with(tmp_path: Path, ranks: dict[str, int]) -> ModelManifest:
    files = tiny_model_files(weight_bytes=1024)
    base = local_manifest(write_files(tmp_path / "src", files), files)
    adapters = [
        Adapter(name=name, source=LocalSource(kind="local", path="x"), files=[], rank=rank)
        for name, rank in ranks.items()
    ]
    return ModelManifest.model_validate({**base.model_dump(), "adapters": adapters})


def settings_for(model_dir: Path, **engine: object) -> Settings:
    return Settings.model_validate({"model": {"path": model_dir}, "engine": engine})


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    for name in ("sql", "poems"):
        directory = tmp_path / "model" / adapter_dir(name)
        directory.mkdir(parents=True)
        (directory / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return tmp_path / "model"


def test_the_manifests_adapters_are_served_in_order(tmp_path: Path, model_dir: Path) -> None:
    manifest = manifest_with(tmp_path, {"sql": 8, "poems": 16})
    served = served_adapters(settings_for(model_dir), manifest)
    assert served == (
        ServedAdapter("sql", model_dir / "adapters/sql", 8, 1),
        ServedAdapter("poems", model_dir / "adapters/poems", 16, 2),
    )
    assert served_adapters(settings_for(model_dir, enable_lora=False), manifest) == ()
    assert served_adapters(settings_for(model_dir), None) == ()


def test_a_rank_cap_below_an_adapter_is_refused(tmp_path: Path, model_dir: Path) -> None:
    manifest = manifest_with(tmp_path, {"sql": 8, "poems": 16})
    with pytest.raises(ConfigError, match=r"max_lora_rank=8 .* \['poems'\]: raise it to 16"):
        served_adapters(settings_for(model_dir, max_lora_rank=8), manifest)


def test_an_adapter_without_a_rank_is_refused(tmp_path: Path, model_dir: Path) -> None:
    manifest = manifest_with(tmp_path, {"sql": 8})
    data = manifest.model_dump()
    data["adapters"].append({**data["adapters"][0], "name": "poems", "rank": None})
    unlocked = ModelManifest.model_validate(data)
    assert not unlocked.locked and unlocked.max_adapter_rank == 8
    with pytest.raises(ConfigError, match=r"\['poems'\] have no rank: the manifest is unlocked"):
        served_adapters(settings_for(model_dir), unlocked)


def test_a_missing_adapter_directory_is_refused(tmp_path: Path, model_dir: Path) -> None:
    manifest = manifest_with(tmp_path, {"sql": 8, "gone": 8})
    with pytest.raises(ConfigError, match=r"adapter 'gone': .* has no adapter_config\.json"):
        served_adapters(settings_for(model_dir), manifest)


def test_engine_arguments_follow_the_adapters(tmp_path: Path, model_dir: Path) -> None:
    manifest = manifest_with(tmp_path, {"sql": 8, "poems": 12})
    settings = settings_for(model_dir)
    served = served_adapters(settings, manifest)
    args = engine_args(settings, False, "float32", None, served, on_cpu=True)
    assert (args["enable_lora"], args["max_loras"], args["max_lora_rank"]) == (True, 2, 16)
    assert "enable_lora" not in engine_args(settings, False, "float32", on_cpu=True)
    capped = lora_args(EngineSettings(max_loras=1, max_lora_rank=64), served)
    assert capped == {"enable_lora": True, "max_loras": 1, "max_lora_rank": 64}
    assert lora_args(EngineSettings(enable_lora=True), ()) == {
        "enable_lora": True,
        "max_loras": 1,
        "max_lora_rank": 1,
    }


@pytest.mark.parametrize(("rank", "vllm_rank"), [(1, 1), (2, 8), (8, 8), (9, 16), (300, 320)])
def test_ranks_round_up_to_one_vllm_accepts(rank: int, vllm_rank: int) -> None:
    assert lora_rank(rank) == vllm_rank


def test_the_ranks_are_the_ones_vllm_accepts() -> None:
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks

    assert tuple(sorted(get_args(MaxLoRARanks))) == VLLM_LORA_RANKS


def test_a_rank_above_vllms_largest_is_refused() -> None:
    with pytest.raises(ValueError, match="above vLLM's largest, 512"):
        lora_rank(513)


def test_vllms_openai_layer_gets_each_adapter_as_a_lora_module(model_dir: Path) -> None:
    served = (ServedAdapter("sql", model_dir / "adapters/sql", 8, 1),)
    args = frontend_args(str(model_dir), "tiny", served)
    assert [(m.name, m.path) for m in args.lora_modules] == [("sql", str(served[0].path))]
    assert frontend_args(str(model_dir), "tiny").lora_modules is None


def test_adapter_ports_follow_the_model_port() -> None:
    assert [adapter_port(50051, i) for i in range(3)] == [50052, 50053, 50054]
    assert adapter_port(0, 2) == 0  # any free port, as the model's
