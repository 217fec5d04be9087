"""The manifests in model-manifests/: schema kept in sync with the model, every file valid,
locked ones exact, unlocked ones citing the config their facts come from."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from support.hf_fixtures import manifest_files
from support.paths import MANIFESTS
from zarf_vllm.model.manifest import (
    HuggingFaceSource,
    ManifestError,
    ModelManifest,
    load_manifest,
    render_json_schema,
    weights_key,
)
from zarf_vllm.packaging.weights.lock import rewrite_locked

ROOT = MANIFESTS
MANIFESTS = sorted(ROOT.glob("*.yaml"))
SCHEMA = json.loads((ROOT / "schema.json").read_text())


def test_checked_in_schema_is_the_generated_one() -> None:
    assert (ROOT / "schema.json").read_text() == render_json_schema(), (
        "model-manifests/schema.json is stale: regenerate it with "
        "`.venv/bin/python -m zarf_vllm.model.manifest > model-manifests/schema.json`"
    )


def test_there_are_the_promised_manifests() -> None:
    manifests = [load_manifest(p) for p in MANIFESTS]
    hub = [m for m in manifests if isinstance(m.source, HuggingFaceSource)]
    assert len(hub) >= 6
    assert {m.task for m in manifests} == {"generate", "embed"}
    assert any(m.quantization.method in ("awq", "gptq") for m in manifests)
    sizes = sorted(m.architecture.parameters for m in hub)
    assert sizes[0] < 1e9 and sizes[-1] > 60e9  # from the small profile to several GPUs
    demo = load_manifest(ROOT / "smollm2-135m-instruct.yaml")
    assert demo.locked and demo.source.kind == "recipe"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_manifest_is_valid_by_schema_and_model(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    manifest = load_manifest(path)
    assert manifest.id == path.stem
    arch = manifest.architecture
    assert arch.attention_heads % arch.kv_heads == 0
    if manifest.locked:
        assert all(f.size > 0 for f in manifest.files)
        assert "config.json" in {f.path for f in manifest.files}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_hub_manifest_cites_its_published_config(path: Path) -> None:
    manifest = load_manifest(path)
    if not isinstance(manifest.source, HuggingFaceSource):
        pytest.skip("not a Hugging Face source")
    assert f"{manifest.source.repo}/blob/main/config.json" in path.read_text()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_lock_rewrite_keeps_comments_and_round_trips(path: Path, tmp_path: Path) -> None:
    manifest = load_manifest(path)
    files = manifest_files({"config.json": b"{}", "model.safetensors": b"weights"})
    update: dict = {"files": files}
    if isinstance(manifest.source, HuggingFaceSource):
        update["source"] = manifest.source.model_copy(update={"revision": "a" * 40})
    locked = manifest.model_copy(update=update)
    text = rewrite_locked(path.read_text(), locked)
    comments = [line for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
    assert all(line in text.splitlines() for line in comments)
    (tmp_path / path.name).write_text(text)
    assert load_manifest(tmp_path / path.name) == locked


def test_schema_and_model_reject_the_same_bad_manifests() -> None:
    good = yaml.safe_load((ROOT / "qwen2.5-0.5b-instruct.yaml").read_text())
    bad_revision = {**good, "source": {**good["source"], "revision": "main"}}
    bad_field = {**good, "weights": "everything"}
    bad_sha = {**good, "files": [{"path": "a", "size": 1, "sha256": "xyz"}]}
    for data in (bad_revision, bad_field, bad_sha):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(SCHEMA).validate(data)
        with pytest.raises(ValueError):
            ModelManifest.model_validate(data)


def test_file_name_must_match_id(tmp_path: Path) -> None:
    text = (ROOT / "qwen2.5-0.5b-instruct.yaml").read_text()
    (tmp_path / "other.yaml").write_text(text)
    with pytest.raises(ManifestError, match="must match the file name"):
        load_manifest(tmp_path / "other.yaml")


def test_weights_key_ignores_serving_settings_only() -> None:
    manifest = load_manifest(ROOT / "smollm2-135m-instruct.yaml")
    chatty = manifest.model_copy(
        update={"sampling": manifest.sampling.model_copy(update={"temperature": 1.0})}
    )
    assert weights_key(chatty) == weights_key(manifest)
    other_files = manifest.model_copy(update={"files": manifest.files[:-1]})
    assert weights_key(other_files) != weights_key(manifest)


def test_manifest_named_as_in_the_image_loads(tmp_path: Path) -> None:
    text = (ROOT / "smollm2-135m-instruct.yaml").read_text()
    (tmp_path / "smollm2-135m-instruct.manifest.yaml").write_text(text)
    assert load_manifest(tmp_path / "smollm2-135m-instruct.manifest.yaml").locked


def test_a_quantized_checkpoint_keeps_its_embedding_and_head_in_16_bits() -> None:
    # Qwen2.5-7B-Instruct-AWQ (unlocked): 2 x 152064 x 3584 x 2 bytes of embedding and LM head,
    # the other 6.52e9 parameters at 4 bits plus a 16-bit scale and 4-bit zero per 128.
    manifest = load_manifest(ROOT / "qwen2.5-7b-instruct-awq.yaml")
    arch = manifest.architecture
    head_and_embedding = 2 * arch.vocab_size * arch.hidden_size
    linear = arch.parameters - head_and_embedding
    expected = linear * (128 * 4 + 16 + 4) // (128 * 8) + head_and_embedding * 2
    assert manifest.weight_bytes == expected
    assert 5.1 < manifest.weight_bytes / 2**30 < 5.3


def test_a_locked_quantized_checkpoint_counts_its_files_real_bytes() -> None:
    # Once locked, the weights are what the safetensors files hold (packed int32 values,
    # scales, zeros, the 16-bit embedding and head), not an estimate from parameters x bits.
    manifest = load_manifest(ROOT / "qwen2.5-7b-instruct-awq.yaml")
    sha = "0" * 64
    files = [
        {"path": "config.json", "size": 1_000, "sha256": sha},
        {"path": "tokenizer.json", "size": 7_000_000, "sha256": sha},
        {"path": "model-00001-of-00002.safetensors", "size": 3_900_000_000, "sha256": sha},
        {"path": "model-00002-of-00002.safetensors", "size": 1_690_000_000, "sha256": sha},
    ]
    locked = ModelManifest.model_validate(
        {**manifest.model_dump(mode="json"), "files": files, "source": {
            **manifest.source.model_dump(mode="json"), "revision": "a" * 40,
        }}
    )  # fmt: skip
    assert locked.weight_bytes == 3_900_000_000 + 1_690_000_000
    assert locked.weight_bytes != manifest.weight_bytes  # the estimate is only a stand-in
