"""The record of a finished verification, kept in the weights directory.

`pull` writes `.zarf-vllm-verified.json` after every file's sha256 matched: the manifest's
weights key (`manifest.weights_key`) and each file's size, mtime and sha256. A later `pull`
trusts a file whose size and mtime are unchanged, so re-running is a few stat calls; copying
the directory elsewhere changes mtimes and brings back a full hash. `verify` never reads it:
it always checks the bytes themselves.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zarf_vllm.model.manifest import ManifestFile, ModelManifest, weights_key
from zarf_vllm.model.verify import locked_files

MARKER_NAME = ".zarf-vllm-verified.json"


@dataclass(frozen=True)
class FileRecord:
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: Path, sha256: str) -> FileRecord:
        stat = path.stat()
        return cls(size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=sha256)


@dataclass
class Marker:
    key: str
    complete: bool = False
    files: dict[str, FileRecord] = field(default_factory=dict)

    def vouches_for(self, directory: Path, entry: ManifestFile) -> bool:
        """The file was verified with this sha256 and has not changed since (size, mtime)."""
        record = self.files.get(entry.path)
        if record is None or record.sha256 != entry.sha256 or record.size != entry.size:
            return False
        try:
            stat = (directory / entry.path).stat()
        except OSError:
            return False
        return stat.st_size == record.size and stat.st_mtime_ns == record.mtime_ns


def read_marker(directory: Path) -> Marker | None:
    try:
        data = json.loads((directory / MARKER_NAME).read_text())
        files = {path: FileRecord(**record) for path, record in data["files"].items()}
        return Marker(key=data["key"], complete=bool(data["complete"]), files=files)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(directory: Path, marker: Marker) -> None:
    """Written to a temporary name and renamed, so a reader never sees half a marker."""
    data = {
        "key": marker.key,
        "complete": marker.complete,
        "files": {path: asdict(record) for path, record in sorted(marker.files.items())},
    }
    tmp = directory / f"{MARKER_NAME}.tmp"
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, directory / MARKER_NAME)


def remove_marker(directory: Path) -> None:
    (directory / MARKER_NAME).unlink(missing_ok=True)


def is_verified(directory: Path | str, manifest: ModelManifest) -> bool:
    """True when a finished verification of this manifest's weights is recorded in the
    directory and no file has changed size or mtime since. Cheap: one stat per file."""
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is None or not marker.complete or not manifest.locked:
        return False
    if marker.key != weights_key(manifest):
        return False
    return all(marker.vouches_for(directory, entry) for entry in locked_files(manifest))
