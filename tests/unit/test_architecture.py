"""The pull-time config check: a sentence-transformers config's max_seq_length must match the
manifest's max_sequence_length, because vLLM derives max_model_len from it and refuses more,
and the sizing caps the chart's max_model_len with the manifest's number."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from support.hf_fixtures import TINY_CONFIG, local_manifest, tiny_model_files, write_files
from zarf_vllm.model.errors import ArchitectureMismatchError
from zarf_vllm.model.manifest import ModelManifest
from zarf_vllm.packaging.weights.architecture import check_architecture
from zarf_vllm.packaging.weights.pull import pull


def model_dir(tmp_path: Path, extra: dict[str, bytes]) -> tuple[Path, dict[str, bytes]]:
    """The tiny model's files (config.json agreeing with TINY_ARCHITECTURE) plus `extra`."""
    files = {**tiny_model_files(weight_bytes=16), **extra}
    directory = tmp_path / "model"
    directory.mkdir()
    return write_files(directory, files), files


def with_limit(manifest: ModelManifest, limit: int | None) -> ModelManifest:
    architecture = manifest.architecture.model_copy(update={"max_sequence_length": limit})
    return manifest.model_copy(update={"architecture": architecture})


def sentence(config: dict) -> bytes:
    return json.dumps(config).encode()


@pytest.mark.parametrize(
    ("extra", "limit"),
    [
        # all-MiniLM-L6-v2's own file (256, while config.json has 512 positions).
        ({"sentence_bert_config.json": sentence({"max_seq_length": 256, "do_lower_case": False})},
         256),
        # No sentence-transformers config: nothing to compare, whatever the manifest says.
        ({}, None),
        ({}, 256),
        # A file that sets no limit agrees with a manifest that states none.
        ({"sentence_bert_config.json": sentence({"do_lower_case": True})}, None),
        # vLLM skips an empty file and reads the next name in its list.
        ({"sentence_bert_config.json": b"{}",
          "sentence_roberta_config.json": sentence({"max_seq_length": 128})}, 128),
    ],
)  # fmt: skip
def test_agreeing_directories_pass(tmp_path: Path, extra: dict[str, bytes], limit: int | None):
    directory, files = model_dir(tmp_path, extra)
    check_architecture(directory, with_limit(local_manifest(directory, files), limit))


@pytest.mark.parametrize(
    ("extra", "limit", "message"),
    [
        # The bug this check exists for: the manifest left the limit out, so the sizing used
        # the 512 positions and the chart rendered a max_model_len vLLM refuses.
        ({"sentence_bert_config.json": sentence({"max_seq_length": 256})}, None,
         "max_sequence_length is 256 (sentence_bert_config.json), the manifest says None"),
        ({"sentence_bert_config.json": sentence({"max_seq_length": 128})}, 256,
         "max_sequence_length is 128 (sentence_bert_config.json), the manifest says 256"),
        ({"sentence_bert_config.json": sentence({"do_lower_case": False})}, 256,
         "sentence_bert_config.json sets no max_seq_length, the manifest says "
         "max_sequence_length 256"),
        # The first non-empty file decides, as in vLLM; a later one is not consulted.
        ({"sentence_bert_config.json": sentence({"max_seq_length": 384}),
          "sentence_roberta_config.json": sentence({"max_seq_length": 256})}, 256,
         "max_sequence_length is 384 (sentence_bert_config.json)"),
        ({"sentence_bert_config.json": b"{not json"}, 256,
         "sentence_bert_config.json: cannot read it"),
        ({"sentence_bert_config.json": b"[256]"}, 256,
         "sentence_bert_config.json: not a JSON object"),
    ],
)  # fmt: skip
def test_disagreeing_directories_are_refused(
    tmp_path: Path, extra: dict[str, bytes], limit: int | None, message: str
) -> None:
    directory, files = model_dir(tmp_path, extra)
    with pytest.raises(ArchitectureMismatchError, match=re.escape(message)):
        check_architecture(directory, with_limit(local_manifest(directory, files), limit))


def test_every_disagreement_is_listed_in_one_error(tmp_path: Path) -> None:
    directory, files = model_dir(
        tmp_path,
        {
            "config.json": json.dumps({**TINY_CONFIG, "num_hidden_layers": 3}).encode(),
            "sentence_bert_config.json": sentence({"max_seq_length": 256}),
        },
    )
    with pytest.raises(ArchitectureMismatchError) as caught:
        check_architecture(directory, with_limit(local_manifest(directory, files), 128))
    assert "layers is 3, the manifest says 2" in str(caught.value)
    assert "max_sequence_length is 256 (sentence_bert_config.json), the manifest says 128" in str(
        caught.value
    )


def test_pull_refuses_a_limit_the_manifest_does_not_state(tmp_path: Path) -> None:
    """The check runs at pull, before the destination exists: a manifest without the limit
    never reaches the sizing with a directory that would make vLLM refuse the chart's value."""
    source, files = model_dir(
        tmp_path, {"sentence_bert_config.json": sentence({"max_seq_length": 256})}
    )
    manifest = local_manifest(source, files)  # the bytes match; max_sequence_length is unset
    with pytest.raises(ArchitectureMismatchError, match="max_sequence_length is 256"):
        pull(manifest, tmp_path / "dest", log=lambda _: None)
    assert not (tmp_path / "dest").exists()
    pulled = pull(with_limit(manifest, 256), tmp_path / "dest", log=lambda _: None)
    assert pulled.directory == tmp_path / "dest"
