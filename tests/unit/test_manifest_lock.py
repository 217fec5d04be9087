"""`lock` against the fake Hub: revision and files recorded, comments kept, facts checked."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from support.hf_fixtures import (
    TINY_CONFIG,
    FakeHub,
    RunningHub,
    local_manifest,
    manifest_files,
    serve_hub,
    tiny_model_files,
    write_files,
)
from zarf_vllm.model.errors import ArchitectureMismatchError
from zarf_vllm.model.manifest import load_manifest
from zarf_vllm.packaging.cli import main
from zarf_vllm.packaging.weights.lock import lock_manifest, lock_manifest_file
from zarf_vllm.packaging.weights.pull import pull

REPO = "org/tiny"

UNLOCKED = """\
# Tiny: a comment that lock must keep.
id: tiny
display_name: Tiny test model
license: Apache-2.0
source:
  kind: huggingface
  repo: org/tiny
  revision: null  # lock fills this in
files: null
architecture:  # from config.json
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
task: generate
"""


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningHub]:
    running = serve_hub(FakeHub())
    server = next(running)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    running.close()


def repo_files() -> dict[str, bytes]:
    # What a real repository also carries, which the default selection leaves out.
    extras = {
        "README.md": b"# card",
        ".gitattributes": b"*.bin filter=lfs",
        "original/consolidated.00.pth": b"x" * 100,
    }
    return {**tiny_model_files(weight_bytes=4096), **extras}


def test_lock_records_revision_and_needed_files_and_keeps_comments(hub, tmp_path) -> None:
    files = repo_files()
    revision = hub.hub.add_repo(REPO, files)
    path = tmp_path / "tiny.yaml"
    path.write_text(UNLOCKED)
    locked = lock_manifest_file(path)
    assert locked.locked and locked.source.revision == revision
    needed = {p: d for p, d in files.items() if p.endswith((".json", ".safetensors"))}
    assert locked.files == manifest_files(needed)  # no README, .gitattributes, original/, .bin
    text = path.read_text()
    assert "# Tiny: a comment that lock must keep." in text and "# from config.json" in text
    assert load_manifest(path) == locked
    # Nothing but the small non-LFS files was downloaded: LFS sha256s come from model info.
    gets = [p for m, p, _ in hub.hub.requests if m == "GET" and "/resolve/" in p]
    assert sorted(p.rsplit("/", 1)[-1] for p in gets) == ["config.json", "tokenizer.json"]
    # And the locked manifest pulls.
    assert pull(locked, tmp_path / "model", log=lambda _: None).fetched


def test_lock_rejects_config_that_contradicts_the_facts(hub, tmp_path) -> None:
    files = {**repo_files(), "config.json": json.dumps({**TINY_CONFIG, "vocab_size": 300}).encode()}
    hub.hub.add_repo(REPO, files)
    path = tmp_path / "tiny.yaml"
    path.write_text(UNLOCKED)
    with pytest.raises(ArchitectureMismatchError, match="vocab_size is 300"):
        lock_manifest_file(path)
    assert path.read_text() == UNLOCKED


def test_lock_at_explicit_revision_and_cli(hub, tmp_path, capsys) -> None:
    files = repo_files()
    revision = hub.hub.add_repo(REPO, files)
    path = tmp_path / "tiny.yaml"
    path.write_text(UNLOCKED)
    assert main(["lock", str(path), "--revision", revision, "--dry-run"]) == 0
    assert path.read_text() == UNLOCKED  # dry run
    assert "sha256:" in capsys.readouterr().out
    assert main(["lock", str(path), "--revision", "f" * 40]) == 1
    assert "Revision Not Found" in capsys.readouterr().err
    assert main(["lock", str(path)]) == 0
    assert load_manifest(path).source.revision == revision


def test_pull_with_lock_flag_locks_then_pulls(hub, tmp_path) -> None:
    hub.hub.add_repo(REPO, repo_files())
    path = tmp_path / "tiny.yaml"
    path.write_text(UNLOCKED)
    assert main(["pull", str(path)]) == 1  # unlocked: nothing downloads without --lock
    assert not [r for r in hub.hub.requests if "/resolve/" in r[1]]
    assert main(["pull", str(path), "--lock", "--dest", str(tmp_path / "model")]) == 0
    assert load_manifest(path).locked and (tmp_path / "model" / "config.json").is_file()


def test_lock_local_directory(tmp_path) -> None:
    files = tiny_model_files(weight_bytes=1024)
    source = write_files(tmp_path / "src", {**files, "README.md": b"card"})
    unlocked = local_manifest(source, files).model_copy(update={"files": None})
    assert not unlocked.locked
    locked = lock_manifest(unlocked)
    assert locked.files == manifest_files(
        {p: d for p, d in files.items() if not p.endswith(".bin")}
    )
