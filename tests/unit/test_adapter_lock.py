"""`lock` fills in a manifest's LoRA adapters (from the fake Hub and from a local directory):
commit, files and rank recorded, comments kept, pickles and rank mismatches refused, a locked
manifest left as it is, and the locked manifest pulls and verifies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.hf_fixtures import (
    FakeHub,
    RunningHub,
    manifest_files,
    safetensors_bytes,
    serve_hub,
    tiny_model_files,
    write_files,
)
from zarf_vllm.model.errors import WeightsError
from zarf_vllm.model.manifest import Adapter, LocalSource, adapter_dir, load_manifest
from zarf_vllm.model.verify import verify_directory
from zarf_vllm.packaging.cli import main
from zarf_vllm.packaging.weights.adapter_lock import lock_adapter
from zarf_vllm.packaging.weights.lock import lock_manifest_file
from zarf_vllm.packaging.weights.pull import pull

MODEL_REPO = "org/tiny"
ADAPTER_REPO = "org/tiny-sql-lora"

MANIFEST = """\
# Tiny with two adapters: comments that lock must keep.
id: tiny
display_name: Tiny test model
license: Apache-2.0
source:
  kind: huggingface
  repo: org/tiny
  revision: null
files: null
architecture:
  model_type: llama
  parameters: 4096
  layers: 2
  hidden_size: 64
  intermediate_size: 128
  attention_heads: 4
  kv_heads: 2
  head_dim: 16
  vocab_size: 256
  max_position_embeddings: 512
  weight_dtype: float32
  tied_embeddings: false
adapters:
  - name: sql  # from the Hub, nothing recorded yet
    source:
      kind: huggingface
      repo: org/tiny-sql-lora
  # the second adapter, from a directory
  - name: poems
    source:
      kind: local
      path: {local}
    files: null
    rank: {local_rank}  # r in adapter_config.json
task: generate
"""


def adapter_config(r: int, base: str | None = MODEL_REPO, **extra: object) -> bytes:
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj"]}
    if base is not None:
        config["base_model_name_or_path"] = base
    return json.dumps({**config, **extra}).encode()


def adapter_repo(r: int = 16, base: str | None = MODEL_REPO, seed: int = 1) -> dict[str, bytes]:
    return {
        "adapter_config.json": adapter_config(r, base),
        "adapter_model.safetensors": safetensors_bytes({"lora_A": 64, "lora_B": 64}, seed),
        # What adapter repositories also carry, which an adapter's selection leaves out.
        "README.md": b"# adapter card",
        "training_args.bin": b"pickle" * 10,
        "checkpoint-100/adapter_model.safetensors": b"older",
    }


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningHub]:
    running = serve_hub(FakeHub())
    server = next(running)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    running.close()


def write_manifest(
    tmp_path: Path, local: dict[str, bytes], local_rank: str = "null", text: str = MANIFEST
) -> Path:
    directory = write_files(tmp_path / "poems-src", local)
    path = tmp_path / "tiny.yaml"
    path.write_text(text.replace("{local}", str(directory)).replace("{local_rank}", local_rank))
    return path


def selected(files: dict[str, bytes]) -> dict[str, bytes]:
    return {p: files[p] for p in ("adapter_config.json", "adapter_model.safetensors")}


def api_calls(hub: RunningHub, repo: str) -> list[str]:
    return [p for m, p, _ in hub.hub.requests if p.startswith(f"/api/models/{repo}")]


def test_lock_fills_in_each_adapter_and_the_result_pulls(hub, tmp_path) -> None:
    hub.hub.add_repo(MODEL_REPO, tiny_model_files(weight_bytes=1024))
    sql = adapter_repo(r=16)
    sql_commit = hub.hub.add_repo(ADAPTER_REPO, sql)
    poems = adapter_repo(r=8, base="someone/tiny-copy", seed=2)
    path = write_manifest(tmp_path, poems, local_rank="8")
    warnings: list[str] = []
    locked = lock_manifest_file(path, log=warnings.append)

    assert locked.locked
    by_name = {a.name: a for a in locked.adapters}
    assert by_name["sql"].source.revision == sql_commit  # type: ignore[union-attr]
    assert by_name["sql"].files == manifest_files(selected(sql))
    assert by_name["sql"].rank == 16
    assert by_name["poems"].files == manifest_files(selected(poems))
    assert by_name["poems"].rank == 8
    assert load_manifest(path) == locked
    text = path.read_text()
    for comment in ("# from the Hub, nothing recorded yet", "# the second adapter, from a dir"):
        assert comment in text
    assert "rank: 8  # r in adapter_config.json" in text
    # The local adapter names another base: warned about, both names given; sql's matches.
    assert len(warnings) == 1
    assert "'poems'" in warnings[0] and "'someone/tiny-copy'" in warnings[0]
    assert f"'{MODEL_REPO}'" in warnings[0]

    dest = pull(locked, tmp_path / "weights", log=lambda _: None).directory
    assert (dest / adapter_dir("sql") / "adapter_model.safetensors").read_bytes() == sql[
        "adapter_model.safetensors"
    ]
    verify_directory(dest, locked, "full")


def test_a_locked_manifest_is_left_as_it_is(hub, tmp_path, capsys) -> None:
    hub.hub.add_repo(MODEL_REPO, tiny_model_files(weight_bytes=1024))
    hub.hub.add_repo(ADAPTER_REPO, adapter_repo())
    path = write_manifest(tmp_path, adapter_repo(r=8, seed=2))
    assert main(["lock", str(path)]) == 0
    assert "lock: adapter sql: 2 files" in capsys.readouterr().err
    text = path.read_text()
    hub.hub.requests.clear()
    assert main(["lock", str(path)]) == 0
    assert path.read_text() == text
    assert api_calls(hub, ADAPTER_REPO) == []  # a locked adapter's pins are not looked up


def test_an_adapter_with_only_pickled_weights_is_refused(hub, tmp_path) -> None:
    hub.hub.add_repo(MODEL_REPO, tiny_model_files(weight_bytes=1024))
    pickled = {"adapter_config.json": adapter_config(16), "adapter_model.bin": b"\x80" * 512}
    hub.hub.add_repo(ADAPTER_REPO, pickled)
    path = write_manifest(tmp_path, adapter_repo(r=8, seed=2))
    before = path.read_text()
    with pytest.raises(WeightsError, match=r"adapter 'sql': .* only as PyTorch pickles") as info:
        lock_manifest_file(path, log=lambda _: None)
    assert "adapter_model.bin" in str(info.value) and "safetensors" in str(info.value)
    assert path.read_text() == before


def test_include_that_selects_pickles_is_refused(hub, tmp_path) -> None:
    hub.hub.add_repo(MODEL_REPO, tiny_model_files(weight_bytes=1024))
    hub.hub.add_repo(ADAPTER_REPO, {**adapter_repo(), "adapter_model.bin": b"\x80" * 512})
    include = '      include: ["adapter_config.json", "adapter_model.*"]\n'
    text = MANIFEST.replace(
        "      repo: org/tiny-sql-lora\n", "      repo: org/tiny-sql-lora\n" + include
    )
    path = write_manifest(tmp_path, adapter_repo(r=8, seed=2), text=text)
    with pytest.raises(WeightsError, match=r"selects pickled weights \['adapter_model\.bin'\]"):
        lock_manifest_file(path, log=lambda _: None)


def test_a_rank_that_contradicts_adapter_config_is_refused(hub, tmp_path) -> None:
    hub.hub.add_repo(MODEL_REPO, tiny_model_files(weight_bytes=1024))
    hub.hub.add_repo(ADAPTER_REPO, adapter_repo())
    path = write_manifest(tmp_path, adapter_repo(r=8, seed=2), local_rank="32")
    before = path.read_text()
    with pytest.raises(
        WeightsError, match=r"adapter 'poems': the manifest's rank is 32, .* rank 8"
    ):
        lock_manifest_file(path, log=lambda _: None)
    assert path.read_text() == before


def test_column_zero_list_items_and_a_missing_rank_key(hub, tmp_path) -> None:
    hub.hub.add_repo(MODEL_REPO, tiny_model_files(weight_bytes=1024))
    commit = hub.hub.add_repo(ADAPTER_REPO, adapter_repo(r=16))
    head, _, _ = MANIFEST.partition("adapters:\n")
    text = (
        head
        + "adapters:\n- name: sql\n  source:\n    kind: huggingface\n    repo: org/tiny-sql-lora\n"
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    locked = lock_manifest_file(path, log=lambda _: None)
    assert locked.adapters[0].rank == 16
    assert f"    revision: {commit}\n" in path.read_text()


def local_adapter(directory: Path, rank: int | None = None) -> Adapter:
    return Adapter(name="sql", source=LocalSource(kind="local", path=str(directory)), rank=rank)


def test_the_rank_is_the_largest_vllm_checks(tmp_path) -> None:
    # vLLM checks max(r, rank_pattern values) against max_lora_rank.
    config = adapter_config(8, rank_pattern={"q_proj": 32, "v_proj": 4})
    directory = write_files(tmp_path / "a", {**adapter_repo(), "adapter_config.json": config})
    assert lock_adapter(local_adapter(directory), None, print).rank == 32
    with pytest.raises(WeightsError, match=r"rank is 8, .* rank 32 \(adapter_config\.json's r=8"):
        lock_adapter(local_adapter(directory, rank=8), None, print)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"adapter_model.safetensors": b"x"}, "has no adapter_config.json"),
        ({"adapter_config.json": adapter_config(8)}, "has no adapter_model.safetensors"),
        ({"adapter_config.json": b"{", "adapter_model.safetensors": b"x"}, "is not JSON"),
        (
            {"adapter_config.json": b'{"peft_type": "IA3"}', "adapter_model.safetensors": b"x"},
            "no positive LoRA rank `r` \\(peft_type 'IA3'\\)",
        ),
    ],
)
def test_local_adapters_that_cannot_be_served_are_refused(tmp_path, files, message) -> None:
    directory = write_files(tmp_path / "a", files)
    with pytest.raises(WeightsError, match=message):
        lock_adapter(local_adapter(directory), None, print)
