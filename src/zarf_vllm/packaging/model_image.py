"""The model image: the backend image plus the weights, one reproducible layer per file.

The pod runs this image, so the weights travel as ordinary OCI content through Zarf (no data
injection, nothing downloaded at deploy time). On top of the backend image's layers come:

- one layer with `/models/<id>.manifest.yaml` (the manifest file as written, comments and all)
  and the `/models/<id>/` directories;
- one layer per weight file, `/models/<id>/<path>`, sorted by path;
- one layer per LoRA adapter, `/models/<id>/adapters/<name>/` with all its files.

Every entry is owned by UID/GID 65532 (the serving user) with mtime 0, so the same weights give
the same layer digests on any machine, and a registry or the Docker engine stores a weight file
that two images share once. Each file's sha256 is computed while it is written and checked
against the manifest: a corrupted weight file never becomes an image.

The config gets BACKEND_MODEL__PATH and BACKEND_MODEL__MANIFEST, and labels naming the model,
its revision and license. The result is an OCI layout (optionally written as an OCI archive for
Zarf's `imageArchives`) and, through skopeo, an image in the local Docker engine.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zarf_vllm import __version__
from zarf_vllm.model.errors import FileVerificationError
from zarf_vllm.model.hashing import default_workers, map_parallel
from zarf_vllm.model.manifest import (
    HuggingFaceSource,
    LocalSource,
    ModelManifest,
    RecipeSource,
    adapter_dir,
    weights_key,
)
from zarf_vllm.model.verify import check_sizes, locked_files
from zarf_vllm.packaging import image_loading
from zarf_vllm.packaging.oci_layout import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    REF_NAME,
    Descriptor,
    LayerEntry,
    Layout,
    Owner,
    WrittenLayer,
    parent_dirs,
    write_archive,
    write_layer,
)

MODELS_ROOT = "models"
OWNER = Owner(uid=65532, gid=65532, mtime=0)
EPOCH = "1970-01-01T00:00:00Z"  # image config times: fixed, for reproducible digests
LABEL_PREFIX = "org.zarf-vllm.model"


class ImageError(Exception):
    """The model image cannot be built: base image, weights or tools."""


def image_tag(manifest: ModelManifest, flavor: str, version: str = __version__) -> str:
    return f"zarf.internal/zarf-vllm/model-{manifest.id}:{version}-{flavor}"


def backend_tag(flavor: str, version: str = __version__) -> str:
    return f"zarf.internal/zarf-vllm/backend:{version}-{flavor}"


def model_paths(manifest: ModelManifest) -> tuple[str, str]:
    """(weights directory, manifest file) inside the image, absolute."""
    return f"/{MODELS_ROOT}/{manifest.id}", f"/{MODELS_ROOT}/{manifest.id}.manifest.yaml"


def revision_of(manifest: ModelManifest) -> str:
    source = manifest.source
    if isinstance(source, HuggingFaceSource):
        return f"{source.repo}@{source.revision}"
    if isinstance(source, RecipeSource):
        return f"recipe {source.recipe} from {source.package}"
    assert isinstance(source, LocalSource)
    return f"local {source.path}"


def model_labels(manifest: ModelManifest) -> dict[str, str]:
    return {
        f"{LABEL_PREFIX}.id": manifest.id,
        f"{LABEL_PREFIX}.name": manifest.display_name,
        f"{LABEL_PREFIX}.revision": revision_of(manifest),
        f"{LABEL_PREFIX}.license": manifest.license,
        f"{LABEL_PREFIX}.task": str(manifest.task),
        f"{LABEL_PREFIX}.weights-key": weights_key(manifest),
    }


# --- the base image -----------------------------------------------------------------------


def _run(command: list[str]) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageError(
            f"{command[0]} is not installed (Debian: apt-get install -y {command[0]})"
        ) from exc
    if result.returncode != 0:
        raise ImageError(f"{' '.join(command)} failed: {result.stderr.strip()[-2000:]}")


SKOPEO_TRANSPORTS = ("docker://", "docker-archive:", "oci-archive:", "containers-storage:", "dir:")
ENGINE = "docker-daemon:"


@dataclass(frozen=True)
class BaseImage:
    config: dict[str, Any]
    layers: list[Descriptor | None]  # None: a layer only the Docker engine holds
    layout: Layout | None  # where the known layers' blobs are


def _from_layout(layout: Layout, ref: str | None) -> BaseImage:
    manifest = layout.read_json(layout.find(ref))
    config = layout.read_json(Descriptor.from_json(manifest["config"]))
    layers: list[Descriptor | None] = [Descriptor.from_json(d) for d in manifest["layers"]]
    return BaseImage(config, layers, layout)


def _engine_export(ref: str, image_id: str) -> Layout:
    """The engine's image as an OCI layout, exported once per image ID into the cache."""
    from zarf_vllm.packaging.weights.pull import cache_dir

    target = cache_dir() / "base-images" / image_id.split(":")[-1]
    if not (target / "index.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            _run(["skopeo", "copy", "--quiet", f"{ENGINE}{ref}", f"oci:{tmp}/layout:base"])
            shutil.rmtree(target, ignore_errors=True)
            (Path(tmp) / "layout").rename(target)
        _prune(target.parent, keep=BASE_EXPORTS_KEPT)
    return Layout(target)


BASE_EXPORTS_KEPT = 2


def _prune(directory: Path, keep: int) -> None:
    """Drops all but the `keep` newest exports: each rebuild of the backend image is a new ID."""
    exports = sorted(
        (p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("tmp")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in exports[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def open_base(base: str, work: Path, *, need_blobs: bool) -> BaseImage:
    """The base image: `oci:DIR[:REF]` is read in place; other skopeo transports are copied
    with skopeo; `docker-daemon:NAME:TAG` or a bare `NAME:TAG` is the local Docker engine,
    where scripts/build-images puts the backend image. From the engine, only the config is
    read (`docker image inspect`) unless the layers themselves are needed (an OCI archive or
    layout output), which exports the image once per image ID into the cache."""
    if base.startswith("oci:"):
        path, _, ref = base[len("oci:") :].partition(":")
        return _from_layout(Layout(Path(path)), ref or None)
    if base.startswith(SKOPEO_TRANSPORTS):
        _run(["skopeo", "copy", "--quiet", base, f"oci:{work / 'base'}:base"])
        return _from_layout(Layout(work / "base"), "base")
    ref = base.removeprefix(ENGINE)
    try:
        engine_image = image_loading.inspect_base(ref)
    except image_loading.DockerError as exc:
        raise ImageError(f"base image {ref}: {exc} (build it with scripts/build-images)") from exc
    if need_blobs:
        return _from_layout(_engine_export(ref, engine_image.image_id), "base")
    layers: list[Descriptor | None] = [None] * len(engine_image.config["rootfs"]["diff_ids"])
    return BaseImage(engine_image.config, layers, None)


# --- layers, config, manifest --------------------------------------------------------------


def _layer_groups(manifest: ModelManifest) -> dict[str, list[str]]:
    """Layer name -> the weight-directory paths it holds: one layer per model file (a file two
    images share is stored once), one per adapter (its few files together, under
    adapters/<name>/), so adding or changing an adapter leaves the model's layers alone."""
    placed = {f.path for a in manifest.adapters for f in a.placed_files()}
    groups = {f.path: [f.path] for f in locked_files(manifest) if f.path not in placed}
    for adapter in manifest.adapters:
        groups[adapter_dir(adapter.name)] = sorted(f.path for f in adapter.placed_files())
    return groups


def _weight_layers(
    layout: Layout, manifest: ModelManifest, weights: Path, workers: int
) -> dict[str, WrittenLayer]:
    model_dir = f"{MODELS_ROOT}/{manifest.id}"
    expected = {f.path: f.sha256 for f in locked_files(manifest)}
    groups = _layer_groups(manifest)

    def build(name: str) -> WrittenLayer:
        entries = [LayerEntry(f"{model_dir}/{p}", source=weights / p) for p in groups[name]]
        layer = write_layer(layout, entries, OWNER)
        for path, entry in zip(groups[name], entries, strict=True):
            actual = layer.file_sha256[entry.path]
            if actual != expected[path]:
                raise FileVerificationError.mismatch(path, "sha256", expected[path], actual)
        return layer

    def size(name: str) -> int:
        return sum((weights / p).stat().st_size for p in groups[name])

    # Largest first, so that the last layer to finish is a small one.
    ordered = sorted(groups, key=lambda name: -size(name))
    return dict(map_parallel(build, ordered, workers))


def _manifest_layer(layout: Layout, manifest: ModelManifest, text: bytes) -> WrittenLayer:
    model_dir = f"{MODELS_ROOT}/{manifest.id}"
    subdirs = {f"{model_dir}/{d}" for f in locked_files(manifest) for d in parent_dirs(f.path)}
    entry = LayerEntry(f"{MODELS_ROOT}/{manifest.id}.manifest.yaml", data=text)
    return write_layer(layout, [entry], OWNER, dirs={MODELS_ROOT, model_dir, *subdirs})


def _new_config(
    base_config: dict[str, Any], manifest: ModelManifest, layers: list[Descriptor]
) -> dict[str, Any]:
    config = dict(base_config)
    inner = dict(config.get("config") or {})
    weights_dir, manifest_file = model_paths(manifest)
    ours = {"BACKEND_MODEL__PATH": weights_dir, "BACKEND_MODEL__MANIFEST": manifest_file}
    env = [e for e in inner.get("Env") or [] if e.split("=", 1)[0] not in ours]
    inner["Env"] = env + [f"{key}={value}" for key, value in ours.items()]
    inner["Labels"] = {**(inner.get("Labels") or {}), **model_labels(manifest)}
    config["config"] = inner
    config["created"] = EPOCH
    rootfs = dict(config.get("rootfs") or {"type": "layers", "diff_ids": []})
    # Uncompressed layers: the diff ID is the blob's own digest.
    rootfs["diff_ids"] = list(rootfs.get("diff_ids", [])) + [d.digest for d in layers]
    config["rootfs"] = rootfs
    if config.get("history"):  # one entry per layer, or none at all
        config["history"] = list(config["history"]) + [
            {"created": EPOCH, "created_by": f"zarf-vllm image {manifest.id} ({d.size} bytes)"}
            for d in layers
        ]
    return config


@dataclass(frozen=True)
class ModelImage:
    ref: str  # its name in the layout and the Docker tag
    config_digest: str  # the image ID in the Docker engine
    manifest_digest: str | None  # None when the base layers stayed in the engine
    weight_layers: dict[str, str]  # weight file path, or adapters/<name>, -> layer digest
    layers: list[Descriptor | None]  # every layer, base first; None: held by the engine
    layout: Path | None = None  # the OCI layout directory, if kept


def assemble(
    base: BaseImage,
    manifest: ModelManifest,
    manifest_text: bytes,
    weights: Path,
    out: Path,
    ref: str,
    *,
    workers: int | None = None,
) -> ModelImage:
    """Writes the new layers and config into a new OCI layout at `out`, and, when every base
    layer's blob is known, the image manifest and an index naming it `ref`."""
    check_sizes(weights, locked_files(manifest))
    layout = Layout.create(out)
    if base.layout is not None:
        for descriptor in base.layers:
            if descriptor is not None:
                layout.adopt_blob(base.layout, descriptor)
    head = _manifest_layer(layout, manifest, manifest_text)
    weight_layers = _weight_layers(layout, manifest, weights, workers or default_workers())
    new_layers = [head.descriptor] + [weight_layers[p].descriptor for p in sorted(weight_layers)]
    config = layout.write_json(_new_config(base.config, manifest, new_layers), CONFIG_MEDIA_TYPE)
    layers = [*base.layers, *new_layers]
    manifest_digest = None
    if all(layer is not None for layer in layers):
        image_manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.to_json(),
            "layers": [d.to_json() for d in layers if d is not None],
            "annotations": {"org.opencontainers.image.created": EPOCH},
        }
        written = layout.write_json(image_manifest, MANIFEST_MEDIA_TYPE)
        layout.write_index([replace(written, annotations={REF_NAME: ref})])
        manifest_digest = written.digest
    return ModelImage(
        ref=ref,
        config_digest=config.digest,
        manifest_digest=manifest_digest,
        weight_layers={p: layer.descriptor.digest for p, layer in weight_layers.items()},
        layers=layers,
        layout=out,
    )


# --- the whole step ------------------------------------------------------------------------


Log = Callable[[str], None]


def build_model_image(
    manifest: ModelManifest,
    manifest_path: Path,
    weights: Path,
    base: str,
    tag: str,
    *,
    layout_dir: Path | None = None,
    oci_archive: Path | None = None,
    load: bool = True,
    workers: int | None = None,
    log: Log = lambda _: None,
) -> ModelImage:
    """Builds the model image of `manifest` from `weights` on `base` and names it `tag`.

    `load` puts it into the local Docker engine (`docker load`, sending only the new layers
    when the base is the engine's); `oci_archive` also writes it as one OCI archive (Zarf
    `imageArchives`) and `layout_dir` keeps its OCI layout, both of which need the base
    layers' bytes (exported from the engine once per base image, then cached). Raises
    `FileVerificationError` naming the file when a weight does not match the manifest,
    `ImageError` for base image, engine or tool problems.
    """
    weights = Path(weights)
    need_blobs = oci_archive is not None or layout_dir is not None
    with tempfile.TemporaryDirectory(prefix="model-image-", dir=_work_dir(layout_dir)) as tmp:
        work = Path(tmp)
        base_image = open_base(base, work, need_blobs=need_blobs)
        out = work / "image"  # renamed to layout_dir only once complete
        log(f"writing {len(_layer_groups(manifest))} weight layers for {tag}")
        image = assemble(
            base_image, manifest, manifest_path.read_bytes(), weights, out, tag, workers=workers
        )
        if oci_archive is not None:
            oci_archive.parent.mkdir(parents=True, exist_ok=True)
            write_archive(Layout(out), oci_archive)
            log(f"wrote {oci_archive}")
        if load:
            config = Descriptor(CONFIG_MEDIA_TYPE, image.config_digest, 0)
            try:
                image_loading.load(Layout(out), config, image.layers, tag)
            except image_loading.DockerError as exc:
                raise ImageError(str(exc)) from exc
            log(f"loaded {tag} into the Docker engine")
        if layout_dir is not None:
            shutil.rmtree(layout_dir, ignore_errors=True)
            out.rename(layout_dir)
    return replace(image, layout=layout_dir)


def _work_dir(layout_dir: Path | None) -> str | None:
    """Temporary files next to the output, so the layout moves into place by a rename."""
    if layout_dir is None:
        return None
    layout_dir.parent.mkdir(parents=True, exist_ok=True)
    return str(layout_dir.parent)
