"""verify_directory and `backend verify` on good, corrupted, incomplete directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.hf_fixtures import hub_manifest, local_manifest, tiny_model_files, write_files
from zarf_vllm.model.errors import FileVerificationError, UnlockedManifestError
from zarf_vllm.model.verify import verify_directory
from zarf_vllm.packaging.cli import main


@pytest.fixture
def model(tmp_path: Path):
    files = tiny_model_files()
    directory = write_files(tmp_path / "model", files)
    return directory, local_manifest(directory, files)


def test_good_directory_passes_both_modes(model) -> None:
    directory, manifest = model
    verify_directory(directory, manifest, "full")
    verify_directory(directory, manifest, "size")


def test_extra_files_are_ignored(model) -> None:
    directory, manifest = model
    (directory / "README.md").write_text("not in the manifest")
    verify_directory(directory, manifest)


def test_flipped_byte_names_file_expected_and_actual(model) -> None:
    directory, manifest = model
    target = directory / "extra/blob.bin"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    expected = next(f.sha256 for f in manifest.files if f.path == "extra/blob.bin")
    with pytest.raises(FileVerificationError) as info:
        verify_directory(directory, manifest, "full")
    assert info.value.path == "extra/blob.bin"
    message = str(info.value)
    assert "sha256 mismatch" in message and expected in message
    # The same-size corruption is invisible to the fast (size-only) mode, by design.
    verify_directory(directory, manifest, "size")


def test_truncated_file_fails_fast_mode(model) -> None:
    directory, manifest = model
    target = directory / "model-00001-of-00002.safetensors"
    size = target.stat().st_size
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(
        FileVerificationError, match=f"size mismatch: expected {size}, actual {size - 1}"
    ):
        verify_directory(directory, manifest, "size")


def test_missing_file(model) -> None:
    directory, manifest = model
    (directory / "tokenizer.json").unlink()
    with pytest.raises(FileVerificationError, match=r"^tokenizer.json: missing from"):
        verify_directory(directory, manifest, "size")


def test_unlocked_manifest_refused(tmp_path: Path) -> None:
    with pytest.raises(UnlockedManifestError, match="lock"):
        verify_directory(tmp_path, hub_manifest("org/tiny", None, None), "full")


def test_unknown_mode_refused(model) -> None:
    directory, manifest = model
    with pytest.raises(ValueError, match="verify mode"):
        verify_directory(directory, manifest, "off")  # type: ignore[arg-type]


def test_cli_exit_codes_and_message(model, tmp_path: Path, capsys) -> None:
    directory, manifest = model
    manifest_path = tmp_path / "tiny.yaml"
    manifest_path.write_text(manifest.model_dump_json())  # JSON is YAML
    assert main(["verify", str(directory), "--manifest", str(manifest_path)]) == 0
    (directory / "config.json").write_text("{}")
    assert main(["verify", str(directory), "--manifest", str(manifest_path), "--fast"]) == 1
    assert "config.json: size mismatch" in capsys.readouterr().err
