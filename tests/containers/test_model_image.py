"""The model image: reproducible weight layers on a base image, checked against the manifest.

The base is a tiny OCI layout made here (no registry, no Docker). skopeo, where installed,
reads the result as a real tool would; the Docker load test needs a running engine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from support.hf_fixtures import local_manifest, tiny_model_files, write_files
from zarf_vllm.model.errors import FileVerificationError
from zarf_vllm.model.manifest import ModelManifest
from zarf_vllm.packaging.model_image import (
    EPOCH,
    assemble,
    build_model_image,
    image_tag,
    model_labels,
    open_base,
)
from zarf_vllm.packaging.oci_layout import Layout

REF = "zarf.internal/zarf-vllm/model-tiny:0.1.0-cpu"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_base(root: Path) -> Path:
    """A one-layer (gzip) base image in an OCI layout, written without the code under test."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = _sha(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("etc/hostname")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"base\n"))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin", "BACKEND_MODEL__PATH=/somewhere/else"],
            "User": "65532:65532",
            "Labels": {"org.opencontainers.image.title": "backend"},
        },
        "rootfs": {"type": "layers", "diff_ids": [_sha(raw.getvalue())]},
        "history": [{"created_by": "base"}],
    }
    config_bytes = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blob(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": blob(layer),
                "size": len(layer),
            }
        ],
    }
    manifest_bytes = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": blob(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": "backend"},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_base(tmp_path / "base")


@pytest.fixture
def model(tmp_path: Path) -> tuple[ModelManifest, Path, Path]:
    files = tiny_model_files(weight_bytes=1 << 20)
    weights = write_files(tmp_path / "weights", files)
    manifest = local_manifest(weights, files)
    manifest_path = tmp_path / "tiny.yaml"
    manifest_path.write_text("# the manifest, comments included\n" + manifest.model_dump_json())
    return manifest, manifest_path, weights


def build(base: Path, model, out: Path):
    manifest, manifest_path, weights = model
    base_image = open_base(f"oci:{base}:backend", out.parent, need_blobs=True)
    return assemble(base_image, manifest, manifest_path.read_bytes(), weights, out, REF)


def image_parts(layout_dir: Path) -> tuple[dict, dict]:
    layout = Layout(layout_dir)
    manifest = layout.read_json(layout.find(REF))
    config = json.loads(layout.blob_path(manifest["config"]["digest"]).read_bytes())
    return manifest, config


def test_same_weights_give_the_same_digests(base, model, tmp_path: Path) -> None:
    first = build(base, model, tmp_path / "one")
    second = build(base, model, tmp_path / "two")
    assert first.manifest_digest == second.manifest_digest
    assert first.config_digest == second.config_digest
    assert first.weight_layers == second.weight_layers
    assert len(set(first.weight_layers.values())) == len(first.weight_layers)


def test_changing_one_file_changes_only_its_layer(base, model, tmp_path: Path) -> None:
    manifest, manifest_path, weights = model
    before = build(base, model, tmp_path / "one")
    files = {f.path: (weights / f.path).read_bytes() for f in manifest.files}
    files["tokenizer.json"] = b'{"model": {"vocab": {"z": 0}}}'
    write_files(weights, files)
    changed = local_manifest(weights, files)
    after = build(base, (changed, manifest_path, weights), tmp_path / "two")
    differing = {p for p in files if before.weight_layers[p] != after.weight_layers[p]}
    assert differing == {"tokenizer.json"}


def test_layers_hold_the_weights_owned_by_65532_with_fixed_times(
    base, model, tmp_path: Path
) -> None:
    manifest, manifest_path, weights = model
    image = build(base, model, tmp_path / "image")
    oci_manifest, _ = image_parts(image.layout)
    layout = Layout(image.layout)
    assert len(oci_manifest["layers"]) == 1 + 1 + len(manifest.files)  # base, manifest, files
    seen = {}
    for descriptor in oci_manifest["layers"][1:]:
        assert descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
        with tarfile.open(layout.blob_path(descriptor["digest"])) as tar:
            # Directories first, then files, each sorted: a fixed order.
            members = tar.getmembers()
            dirs = [m.name for m in members if m.isdir()]
            files = [m.name for m in members if m.isfile()]
            assert [m.name for m in members] == sorted(dirs) + sorted(files)
            for member in tar.getmembers():
                assert (member.uid, member.gid, member.mtime) == (65532, 65532, 0)
                assert member.mode == (0o755 if member.isdir() else 0o644)
                if member.isfile():
                    seen[member.name] = tar.extractfile(member).read()
    assert seen["models/tiny.manifest.yaml"] == manifest_path.read_bytes()
    for entry in manifest.files:
        assert seen[f"models/tiny/{entry.path}"] == (weights / entry.path).read_bytes()
    # One weight file per layer, in path order after the manifest layer.
    order = [p for p in sorted(image.weight_layers)]
    digests = [d["digest"] for d in oci_manifest["layers"][2:]]
    assert digests == [image.weight_layers[p] for p in order]


def test_config_env_labels_and_history(base, model, tmp_path: Path) -> None:
    manifest, _, _ = model
    image = build(base, model, tmp_path / "image")
    oci_manifest, config = image_parts(image.layout)
    env = config["config"]["Env"]
    assert "PATH=/usr/bin" in env
    assert "BACKEND_MODEL__PATH=/models/tiny" in env
    assert "BACKEND_MODEL__MANIFEST=/models/tiny.manifest.yaml" in env
    assert not any(e.startswith("BACKEND_MODEL__PATH=/somewhere") for e in env)
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "backend"  # the base's, kept
    assert labels.items() >= model_labels(manifest).items()
    assert labels["org.zarf-vllm.model.license"] == "Apache-2.0"
    assert "local" in labels["org.zarf-vllm.model.revision"]
    assert config["config"]["User"] == "65532:65532"
    assert config["created"] == EPOCH
    assert config["rootfs"]["diff_ids"][1:] == [d["digest"] for d in oci_manifest["layers"][1:]]
    assert len(config["history"]) == len(oci_manifest["layers"])


def test_corrupted_weight_file_stops_the_build(base, model, tmp_path: Path) -> None:
    manifest, manifest_path, weights = model
    target = weights / "extra/blob.bin"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(FileVerificationError) as info:
        build_model_image(
            manifest,
            manifest_path,
            weights,
            f"oci:{base}:backend",
            REF,
            layout_dir=tmp_path / "out",
            load=False,
        )
    assert info.value.path == "extra/blob.bin"
    assert not (tmp_path / "out").exists()


def test_oci_archive_is_deterministic(base, model, tmp_path: Path) -> None:
    manifest, manifest_path, weights = model
    archives = []
    for name in ("a", "b"):
        archive = tmp_path / f"{name}.tar"
        image = build_model_image(
            manifest,
            manifest_path,
            weights,
            f"oci:{base}:backend",
            REF,
            oci_archive=archive,
            load=False,
        )
        assert image.layout is None
        archives.append(archive.read_bytes())
    assert archives[0] == archives[1]
    with tarfile.open(tmp_path / "a.tar") as tar:
        index = json.loads(tar.extractfile("index.json").read())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == REF


def test_default_tag_names() -> None:
    manifest = local_manifest(Path("/x"), {"config.json": b"{}"}, id="qwen2.5-0.5b-instruct")
    assert image_tag(manifest, "cuda", "1.2.3") == (
        "zarf.internal/zarf-vllm/model-qwen2.5-0.5b-instruct:1.2.3-cuda"
    )


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_the_layout(base, model, tmp_path: Path) -> None:
    image = build(base, model, tmp_path / "image")
    out = subprocess.run(
        ["skopeo", "inspect", f"oci:{image.layout}:{REF}"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    assert info["Labels"]["org.zarf-vllm.model.id"] == "tiny"
    assert len(info["Layers"]) == 2 + len(model[0].files)
    assert info["Digest"] == image.manifest_digest


def _docker_ready() -> bool:
    if shutil.which("docker") is None or shutil.which("skopeo") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def _docker_run(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def _cat(tag: str, path: str, target: Path) -> bytes:
    container = _docker_run("create", tag, "none").strip()
    try:
        _docker_run("cp", f"{container}:{path}", str(target))
        return target.read_bytes()
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True, check=False)


@pytest.mark.skipif(not _docker_ready(), reason="no Docker engine running")
def test_loads_into_docker_and_builds_on_an_engine_base(base, model, tmp_path: Path) -> None:
    manifest, manifest_path, weights = model
    first = "zarf.internal/zarf-vllm/model-test-tiny:full"
    second = "zarf.internal/zarf-vllm/model-test-tiny:on-engine-base"
    try:
        # From an OCI layout: every layer goes to the engine.
        one = build_model_image(manifest, manifest_path, weights, f"oci:{base}:backend", first)
        inspect = json.loads(_docker_run("image", "inspect", first))[0]
        assert inspect["Id"] == one.config_digest
        assert inspect["Config"]["Labels"]["org.zarf-vllm.model.id"] == "tiny"
        blob = _cat(first, "/models/tiny/extra/blob.bin", tmp_path / "one")
        assert blob == (weights / "extra/blob.bin").read_bytes()
        # On an image the engine holds: its layers are named but not sent.
        two = build_model_image(manifest, manifest_path, weights, first, second)
        assert two.manifest_digest is None and two.layers[0] is None
        assert two.weight_layers == one.weight_layers  # same weights, same layer digests
        inspect = json.loads(_docker_run("image", "inspect", second))[0]
        assert inspect["RootFS"]["Layers"][: len(one.layers)] == [
            d.digest if d.media_type.endswith(".tar") else inspect["RootFS"]["Layers"][0]
            for d in one.layers
        ]
        assert _cat(second, "/models/tiny.manifest.yaml", tmp_path / "two") == (
            manifest_path.read_bytes()
        )
    finally:
        subprocess.run(["docker", "rmi", second, first], capture_output=True, check=False)
