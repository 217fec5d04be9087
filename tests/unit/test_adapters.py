"""LoRA adapters in the manifest: validated, pulled from their own sources (a local directory,
the fake Hub) into adapters/<name>/, verified with the model, and carried as one image layer
per adapter."""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.hf_fixtures import (
    FakeHub,
    RunningHub,
    local_manifest,
    manifest_files,
    serve_hub,
    tiny_model_files,
    write_files,
)
from zarf_vllm.model.errors import FileVerificationError, UnlockedManifestError
from zarf_vllm.model.manifest import (
    Adapter,
    HuggingFaceSource,
    LocalSource,
    ModelManifest,
    adapter_dir,
    weights_key,
)
from zarf_vllm.model.verify import locked_files, verify_directory
from zarf_vllm.packaging.model_image import BaseImage, assemble
from zarf_vllm.packaging.oci_layout import Layout
from zarf_vllm.packaging.weights.pull import pull


def adapter_files(seed: int) -> dict[str, bytes]:
    config = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"], "seed": seed}
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": bytes([seed]) * 4096,
    }


def with_adapters(manifest: ModelManifest, adapters: list[Adapter]) -> ModelManifest:
    return ModelManifest.model_validate({**manifest.model_dump(), "adapters": adapters})


def local_adapter(name: str, directory: Path, files: dict[str, bytes]) -> Adapter:
    return Adapter(
        name=name,
        source=LocalSource(kind="local", path=str(write_files(directory, files))),
        files=manifest_files(files),
        rank=8,
    )


@pytest.fixture
def model(tmp_path: Path) -> ModelManifest:
    files = tiny_model_files(weight_bytes=64 << 10)
    base = local_manifest(write_files(tmp_path / "model-src", files), files)
    return with_adapters(
        base,
        [
            local_adapter("sql", tmp_path / "sql-src", adapter_files(1)),
            local_adapter("poems", tmp_path / "poems-src", adapter_files(2)),
        ],
    )


def quiet(_: str) -> None:
    pass


def test_adapter_files_are_placed_under_their_directory(model: ModelManifest) -> None:
    paths = [f.path for f in locked_files(model)]
    assert f"{adapter_dir('sql')}/adapter_config.json" in paths
    assert f"{adapter_dir('poems')}/adapter_model.safetensors" in paths
    assert model.max_adapter_rank == 8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"adapters": [{"name": "sql"}, {"name": "sql"}]}, "more than once: ['sql']"),
        ({"adapters": [{"name": "tiny"}]}, "is the model's id"),
        ({"task": "embed"}, "generation models only"),
        ({"adapters": [{"name": "Bad Name"}]}, "String should match pattern"),
        ({"adapters": [{"rank": 0}]}, "greater than 0"),
    ],
)
def test_bad_adapters_are_refused_with_the_reason(
    model: ModelManifest, change: dict, message: str
) -> None:
    data = model.model_dump(mode="json")
    template = data["adapters"][0]
    if "adapters" in change:
        change = {"adapters": [{**template, **a} for a in change["adapters"]]}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelManifest.model_validate({**data, **change})


def test_model_files_under_adapters_dir_are_refused(model: ModelManifest) -> None:
    data = model.model_dump(mode="json")
    data["files"].append({**data["files"][0], "path": "adapters/x/y.bin"})
    with pytest.raises(ValueError, match="reserved for `adapters`"):
        ModelManifest.model_validate(data)


def test_an_unlocked_adapter_makes_the_manifest_unlocked(model: ModelManifest) -> None:
    data = model.model_dump(mode="json")
    data["adapters"][1]["files"] = None
    unlocked = ModelManifest.model_validate(data)
    assert not unlocked.locked
    with pytest.raises(UnlockedManifestError, match="each adapter"):
        locked_files(unlocked)


def test_adapters_change_the_weights_key_only_when_present(model: ModelManifest) -> None:
    bare = ModelManifest.model_validate({**model.model_dump(), "adapters": []})
    assert weights_key(bare) != weights_key(model)
    # Models without adapters keep the key they had before adapters existed.
    assert "adapters" not in bare.model_dump(include={"source", "files"})


def test_pull_places_and_verifies_each_adapter(model: ModelManifest, tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    result = pull(model, dest, log=quiet)
    assert f"{adapter_dir('sql')}/adapter_config.json" in result.fetched
    assert (dest / adapter_dir("poems") / "adapter_model.safetensors").read_bytes() == bytes(
        [2]
    ) * 4096
    verify_directory(dest, model, "full")
    assert pull(model, dest, log=quiet).skipped
    (dest / adapter_dir("sql") / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    with pytest.raises(
        FileVerificationError, match=re.escape("adapters/sql/adapter_model.safetensors")
    ):
        verify_directory(dest, model, "full")


def test_pull_refuses_an_adapter_whose_source_differs(model: ModelManifest, tmp_path: Path) -> None:
    source = Path(model.adapters[0].source.path)  # type: ignore[union-attr]
    (source / "adapter_model.safetensors").write_bytes(b"x" * 4096)
    dest = tmp_path / "weights"
    with pytest.raises(FileVerificationError, match=re.escape("adapter_model.safetensors")):
        pull(model, dest, log=quiet)
    assert not dest.exists()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningHub]:
    running = serve_hub(FakeHub(token="hf_test_token"))
    server = next(running)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    running.close()


def test_pull_fetches_an_adapter_from_the_hub(
    hub: RunningHub, model: ModelManifest, tmp_path: Path
) -> None:
    files = adapter_files(3)
    revision = hub.hub.add_repo("org/tiny-lora", files)
    on_hub = Adapter(
        name="hub-lora",
        source=HuggingFaceSource(kind="huggingface", repo="org/tiny-lora", revision=revision),
        files=manifest_files(files),
        rank=8,
    )
    manifest = with_adapters(model, [*model.adapters, on_hub])
    dest = pull(manifest, tmp_path / "weights", log=quiet).directory
    assert (dest / adapter_dir("hub-lora") / "adapter_config.json").read_bytes() == files[
        "adapter_config.json"
    ]
    verify_directory(dest, manifest, "full")


def layer_members(layout: Layout, digest: str) -> list[str]:
    with tarfile.open(layout.blob_path(digest)) as tar:
        return [m.name for m in tar.getmembers() if m.isfile()]


def test_each_adapter_is_one_image_layer(model: ModelManifest, tmp_path: Path) -> None:
    weights = pull(model, tmp_path / "weights", log=quiet).directory
    base = BaseImage(
        config={"config": {}, "rootfs": {"type": "layers", "diff_ids": []}}, layers=[], layout=None
    )
    image = assemble(base, model, b"id: tiny\n", weights, tmp_path / "image", "tiny:test")
    layout = Layout(tmp_path / "image")
    sql = layer_members(layout, image.weight_layers[adapter_dir("sql")])
    assert sql == [
        "models/tiny/adapters/sql/adapter_config.json",
        "models/tiny/adapters/sql/adapter_model.safetensors",
    ]
    model_layers = [p for p in image.weight_layers if not p.startswith("adapters/")]
    assert sorted(model_layers) == sorted(f.path for f in model.files or [])
    # One layer per model file, one per adapter, and the manifest's layer.
    assert len(image.layers) == len(model_layers) + 2 + 1


def test_a_corrupted_adapter_never_becomes_an_image(model: ModelManifest, tmp_path: Path) -> None:
    weights = pull(model, tmp_path / "weights", log=quiet).directory
    (weights / adapter_dir("poems") / "adapter_config.json").write_bytes(
        b"{" + b" " * (len(adapter_files(2)["adapter_config.json"]) - 2) + b"}"
    )
    base = BaseImage(config={"config": {}}, layers=[], layout=None)
    with pytest.raises(
        FileVerificationError, match=re.escape("adapters/poems/adapter_config.json")
    ):
        assemble(base, model, b"id: tiny\n", weights, tmp_path / "image", "tiny:test")
