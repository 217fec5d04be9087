"""Reading and writing OCI image layouts, with byte-for-byte reproducible layers.

Just what the model image needs (`backend.model_image`): read an image out of a layout
directory, add uncompressed layers written as deterministic tar streams (fixed owner, mode and
mtime, entries in a fixed order, hashed while they are written), and write the result as a
layout directory or a single OCI archive that Zarf's `imageArchives` reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
COPY_BUFFER = 8 * 1024 * 1024


class LayoutError(Exception):
    """An OCI layout that cannot be read, or an image reference it does not hold."""


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            data["annotations"] = dict(sorted(self.annotations.items()))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        return cls(data["mediaType"], data["digest"], data["size"], data.get("annotations", {}))


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no whitespace: the same content always gives the same digest."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    """An OCI image layout directory: `oci-layout`, `index.json` and `blobs/sha256/`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def create(cls, root: Path) -> Layout:
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        return cls(root)

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "blobs" / algorithm / hexdigest

    def read_json(self, descriptor: Descriptor) -> dict[str, Any]:
        return json.loads(self.blob_path(descriptor.digest).read_bytes())

    def write_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return Descriptor(media_type, digest, len(data))

    def write_json(self, data: Any, media_type: str) -> Descriptor:
        return self.write_bytes(canonical_json(data), media_type)

    def adopt_blob(self, source: Layout, descriptor: Descriptor) -> None:
        """Takes a blob from another layout: a hard link where possible, else a copy."""
        target = self.blob_path(descriptor.digest)
        if target.exists():
            return
        try:
            os.link(source.blob_path(descriptor.digest), target)
        except OSError:
            shutil.copyfile(source.blob_path(descriptor.digest), target)

    def manifests(self) -> list[Descriptor]:
        try:
            index = json.loads((self.root / "index.json").read_text())
        except (OSError, ValueError) as exc:
            raise LayoutError(f"{self.root}: not an OCI layout ({exc})") from exc
        return [Descriptor.from_json(m) for m in index.get("manifests", [])]

    def find(self, ref: str | None) -> Descriptor:
        """The image manifest named `ref` (org.opencontainers.image.ref.name), or the only one."""
        manifests = self.manifests()
        if ref is not None:
            named = [m for m in manifests if m.annotations.get(REF_NAME) == ref]
            if not named:
                names = [m.annotations.get(REF_NAME) for m in manifests]
                raise LayoutError(f"{self.root}: no image {ref!r} (it holds {names})")
            manifests = named
        if len(manifests) != 1:
            raise LayoutError(f"{self.root}: holds {len(manifests)} images; name one")
        descriptor = manifests[0]
        if descriptor.media_type == INDEX_MEDIA_TYPE:
            raise LayoutError(f"{self.root}: {ref or 'the image'} is a multi-platform index")
        return descriptor

    def write_index(self, manifests: Iterable[Descriptor]) -> None:
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [m.to_json() for m in manifests],
        }
        (self.root / "index.json").write_bytes(canonical_json(index))

    def files(self) -> Iterator[Path]:
        """Every file of the layout, in a fixed order (for archives)."""
        yield self.root / "oci-layout"
        yield self.root / "index.json"
        yield from sorted((self.root / "blobs" / "sha256").iterdir())


# --- deterministic layer tars ---------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    mtime: int = 0


class CountingWriter:
    """A write-only file that counts (and, with `digest`, hashes) what passes through it.

    tarfile's plain "w" mode needs only write() and tell() of it, and works on a pipe this
    way. (Its stream mode "w|" re-slices its buffer on every write: quadratic in the chunk
    size, several times slower on multi-GB files.)
    """

    def __init__(self, out: BinaryIO, digest: bool = True) -> None:
        self._out = out
        self.digest = hashlib.sha256() if digest else None
        self.size = 0

    def write(self, data: bytes) -> int:
        if self.digest is not None:
            self.digest.update(data)
        self.size += len(data)
        return self._out.write(data)

    def tell(self) -> int:
        return self.size


class _DigestReader:
    """A read-only file that hashes what is read from it (a weight file's own sha256)."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.digest.update(data)
        return data


def _info(name: str, kind: bytes, mode: int, owner: Owner, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = owner.uid, owner.gid
    info.uname = info.gname = ""
    info.mtime = owner.mtime
    info.size = size
    return info


def parent_dirs(path: str) -> list[str]:
    """'a/b/c.bin' -> ['a', 'a/b']."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class LayerEntry:
    """One file of a layer: its path in the image and where its bytes come from."""

    path: str  # relative to /, no leading slash
    source: Path | None = None  # a file on disk, or
    data: bytes | None = None  # bytes in memory
    mode: int = 0o644


@dataclass(frozen=True)
class WrittenLayer:
    descriptor: Descriptor
    file_sha256: dict[str, str]  # each entry's own sha256, for verification


def write_layer(
    layout: Layout, entries: list[LayerEntry], owner: Owner, dirs: Iterable[str] = ()
) -> WrittenLayer:
    """Writes one uncompressed layer blob: the directories (`dirs` and every entry's parents,
    mode 0755) then the entries, all owned by `owner`, sorted by path, PAX format (sizes over
    8 GiB need it). The same entries give the same bytes, so the same digest."""
    all_dirs = sorted(set(dirs) | {d for e in entries for d in parent_dirs(e.path)})
    tmp = layout.root / "blobs" / "sha256" / f".layer-{os.getpid()}-{id(entries)}.tmp"
    hashes: dict[str, str] = {}
    try:
        with open(tmp, "wb") as raw:
            out = CountingWriter(raw)
            with tarfile.open(
                fileobj=out, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER
            ) as tar:
                for directory in all_dirs:
                    tar.addfile(_info(directory + "/", tarfile.DIRTYPE, 0o755, owner))
                for entry in sorted(entries, key=lambda e: e.path):
                    hashes[entry.path] = _add_entry(tar, entry, owner)
        assert out.digest is not None
        digest = "sha256:" + out.digest.hexdigest()
        os.replace(tmp, layout.blob_path(digest))
    finally:
        tmp.unlink(missing_ok=True)
    return WrittenLayer(Descriptor(LAYER_MEDIA_TYPE, digest, out.size), hashes)


def _add_entry(tar: tarfile.TarFile, entry: LayerEntry, owner: Owner) -> str:
    if entry.data is not None:
        tar.addfile(
            _info(entry.path, tarfile.REGTYPE, entry.mode, owner, len(entry.data)),
            io.BytesIO(entry.data),
        )
        return hashlib.sha256(entry.data).hexdigest()
    assert entry.source is not None
    with open(entry.source, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        reader = _DigestReader(f)
        tar.addfile(_info(entry.path, tarfile.REGTYPE, entry.mode, owner, size), reader)
    return reader.digest.hexdigest()


def write_archive(layout: Layout, archive: Path) -> None:
    """The layout as one tar (an `oci-archive`), deterministic like the layers."""
    owner = Owner(0, 0)
    tmp = archive.with_name(f".{archive.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER) as tar:
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_info(directory + "/", tarfile.DIRTYPE, 0o755, owner))
        for path in layout.files():
            relative = str(path.relative_to(layout.root))
            with open(path, "rb") as f:
                info = _info(relative, tarfile.REGTYPE, 0o644, owner, os.fstat(f.fileno()).st_size)
                tar.addfile(info, f)
    os.replace(tmp, archive)
