"""`pull` from a Hugging Face Hub, against a local fake Hub on 127.0.0.1 (hf_fixtures), and
from a local directory: verified, resumable, and never a half-verified destination."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from support.hf_fixtures import (
    TINY_CONFIG,
    FakeHub,
    RunningHub,
    hub_manifest,
    local_manifest,
    serve_hub,
    tiny_model_files,
    write_files,
)
from zarf_vllm.model.errors import (
    ArchitectureMismatchError,
    FileVerificationError,
    UnlockedManifestError,
    WeightsError,
)
from zarf_vllm.model.verify import verify_directory
from zarf_vllm.packaging.weights.marker import MARKER_NAME, is_verified
from zarf_vllm.packaging.weights.pull import pull

REPO = "org/tiny"
BLOB = "extra/blob.bin"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningHub]:
    fake = FakeHub(token="hf_test_token")
    running = serve_hub(fake)
    server = next(running)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    running.close()


@pytest.fixture
def files() -> dict[str, bytes]:
    return tiny_model_files(weight_bytes=3 << 20)


def quiet(_: str) -> None:
    pass


def test_pull_downloads_verifies_and_skips_next_time(hub, files, tmp_path: Path) -> None:
    revision = hub.hub.add_repo(REPO, {**files, "README.md": b"not in the manifest"})
    manifest = hub_manifest(REPO, revision, files)
    dest = tmp_path / "model"
    result = pull(manifest, dest, log=quiet)
    assert not result.skipped and sorted(result.fetched) == sorted(files)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        {MARKER_NAME, "config.json", "tokenizer.json", "extra"}
        | {p for p in files if p.endswith(".safetensors")}
    )
    verify_directory(dest, manifest, "full")
    assert not (tmp_path / ".model.partial").exists()
    # Plain HTTP with the token, from the pinned revision; never the Xet protocol.
    resolves = [p for m, p, _ in hub.hub.requests if m == "GET"]
    assert resolves and all(f"/{REPO}/resolve/{revision}/" in p for p in resolves)
    assert all(h.get("authorization") == "Bearer hf_test_token" for _, _, h in hub.hub.requests)

    before = len(hub.hub.requests)
    assert pull(manifest, dest, log=quiet).skipped
    assert len(hub.hub.requests) == before


def test_corrupted_file_stops_naming_it_and_leaves_no_destination(
    hub, files, tmp_path: Path
) -> None:
    revision = hub.hub.add_repo(REPO, files)
    manifest = hub_manifest(REPO, revision, files)
    bad = "tokenizer.json"  # the smallest file: with one worker, fetched last
    hub.hub.corrupt.add(bad)
    dest = tmp_path / "model"
    expected = next(f.sha256 for f in manifest.files if f.path == bad)
    with pytest.raises(FileVerificationError) as info:
        pull(manifest, dest, workers=1, log=quiet)
    assert info.value.path == bad
    assert str(info.value).startswith(f"{bad}: sha256 mismatch: expected {expected}, actual ")
    assert not dest.exists()

    # Fixed upstream: the re-run fetches only the file that was not verified yet.
    hub.hub.corrupt.clear()
    hub.hub.requests.clear()
    result = pull(manifest, dest, log=quiet)
    assert result.fetched == [bad]
    assert sorted(result.kept) == sorted(set(files) - {bad})
    assert [p for m, p, _ in hub.hub.requests if m == "GET"] == [
        f"/{REPO}/resolve/{revision}/{bad}"
    ]
    verify_directory(dest, manifest, "full")


def test_interrupted_transfer_resumes_with_range(hub, tmp_path: Path) -> None:
    # huggingface_hub writes in chunks of DOWNLOAD_CHUNK_SIZE (10 MiB): a connection that
    # drops after one full chunk resumes from there, with a Range request.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    files = tiny_model_files(weight_bytes=chunk + (2 << 20))
    revision = hub.hub.add_repo(REPO, files)
    manifest = hub_manifest(REPO, revision, files)
    hub.hub.cut_after[BLOB] = chunk + (1 << 20)
    pull(manifest, tmp_path / "model", log=quiet)
    ranges = [h.get("range") for h in hub.hub.gets(BLOB)]
    assert ranges == [None, f"bytes={chunk}-"]
    verify_directory(tmp_path / "model", manifest, "full")


def test_partial_file_from_an_interrupted_run_is_resumed(hub, files, tmp_path: Path) -> None:
    revision = hub.hub.add_repo(REPO, files)
    manifest = hub_manifest(REPO, revision, files)
    # What a killed run leaves: the first 1,000,000 bytes in the staging area.
    partial = tmp_path / ".model.partial" / ".partial" / BLOB
    partial.parent.mkdir(parents=True)
    partial.write_bytes(files[BLOB][:1_000_000])
    pull(manifest, tmp_path / "model", log=quiet)
    assert [h.get("range") for h in hub.hub.gets(BLOB)] == ["bytes=1000000-"]
    verify_directory(tmp_path / "model", manifest, "full")


def test_wrong_config_json_stops_before_the_destination_exists(hub, files, tmp_path: Path) -> None:
    wrong = {**files, "config.json": json.dumps({**TINY_CONFIG, "num_hidden_layers": 3}).encode()}
    revision = hub.hub.add_repo(REPO, wrong)
    manifest = hub_manifest(REPO, revision, wrong)  # the bytes match; the facts do not
    with pytest.raises(ArchitectureMismatchError, match="layers is 3, the manifest says 2"):
        pull(manifest, tmp_path / "model", log=quiet)
    assert not (tmp_path / "model").exists()


def test_parameter_count_is_checked_against_safetensors(hub, files, tmp_path: Path) -> None:
    revision = hub.hub.add_repo(REPO, files)
    manifest = hub_manifest(REPO, revision, files)
    doubled = manifest.model_copy(
        update={"architecture": manifest.architecture.model_copy(update={"parameters": 8192})}
    )
    with pytest.raises(ArchitectureMismatchError, match="parameters is 4096"):
        pull(doubled, tmp_path / "model", log=quiet)


def test_wrong_size_announced_by_the_server_stops(hub, files, tmp_path: Path) -> None:
    served = {**files, BLOB: files[BLOB] + b"x"}
    revision = hub.hub.add_repo(REPO, served)
    manifest = hub_manifest(REPO, revision, files)
    with pytest.raises(FileVerificationError, match=f"size mismatch: expected {len(files[BLOB])}"):
        pull(manifest, tmp_path / "model", log=quiet)


def test_missing_token_is_refused_by_the_server(hub, files, tmp_path, monkeypatch) -> None:
    revision = hub.hub.add_repo(REPO, files)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token either
    with pytest.raises(Exception, match=r"401|[Rr]epository"):
        pull(hub_manifest(REPO, revision, files), tmp_path / "model", log=quiet)
    assert not (tmp_path / "model").exists()


def test_new_revision_fetches_only_changed_files(hub, files, tmp_path: Path) -> None:
    revision = hub.hub.add_repo(REPO, files)
    dest = tmp_path / "model"
    pull(hub_manifest(REPO, revision, files), dest, log=quiet)
    changed = {**files, "tokenizer.json": b'{"model": {"vocab": {"b": 0}}}'}
    new_revision = hub.hub.add_repo(REPO, changed, revision="1" * 40)
    hub.hub.requests.clear()
    result = pull(hub_manifest(REPO, new_revision, changed), dest, log=quiet)
    assert result.fetched == ["tokenizer.json"]
    assert [p for m, p, _ in hub.hub.requests if m == "GET"] == [
        f"/{REPO}/resolve/{new_revision}/tokenizer.json"
    ]
    assert (dest / "tokenizer.json").read_bytes() == changed["tokenizer.json"]


def test_unlocked_manifest_downloads_nothing(hub, tmp_path: Path) -> None:
    with pytest.raises(UnlockedManifestError):
        pull(hub_manifest(REPO, None, None), tmp_path / "model", log=quiet)
    assert hub.hub.requests == []


def test_local_source_copies_and_verifies(files, tmp_path: Path) -> None:
    source = write_files(tmp_path / "source", files)
    manifest = local_manifest(source, files)
    result = pull(manifest, tmp_path / "model", log=quiet)
    assert sorted(result.fetched) == sorted(files) and is_verified(result.directory, manifest)
    (source / "tokenizer.json").write_bytes(b"{}")
    with pytest.raises(FileVerificationError, match=r"tokenizer\.json: size mismatch"):
        pull(manifest, tmp_path / "other", log=quiet)
    assert not (tmp_path / "other").exists()


def test_changed_file_in_destination_is_refetched(files, tmp_path: Path) -> None:
    source = write_files(tmp_path / "source", files)
    manifest = local_manifest(source, files)
    dest = pull(manifest, tmp_path / "model", log=quiet).directory
    (dest / "tokenizer.json").write_bytes(b"x" * len(files["tokenizer.json"]))  # same size
    assert not is_verified(dest, manifest)  # mtime changed
    result = pull(manifest, dest, log=quiet)
    assert result.fetched == ["tokenizer.json"]
    verify_directory(dest, manifest, "full")


def test_destination_with_foreign_files_is_not_replaced(files, tmp_path: Path) -> None:
    source = write_files(tmp_path / "source", files)
    dest = tmp_path / "model"
    (dest / "notes").mkdir(parents=True)
    (dest / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(WeightsError, match=r"notes/mine.txt"):
        pull(local_manifest(source, files), dest, log=quiet)
    assert (dest / "notes" / "mine.txt").read_text() == "keep me"
