"""Downloads from a Hugging Face Hub (or a mirror that speaks its API) with huggingface_hub.

HF_ENDPOINT (an internal mirror) and HF_TOKEN are read from the environment at call time.
Each file is fetched over plain HTTP (HEAD for its metadata, GET with Range to resume), never
through Xet storage: the bytes go into a partial file that survives an interrupted run, are
hashed as they arrive, and reach their final name only when size and sha256 match.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

from zarf_vllm.model.errors import FileVerificationError, WeightsError
from zarf_vllm.model.hashing import CHUNK_BYTES
from zarf_vllm.model.manifest import ManifestFile


def hub_endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub itself reads it only once, at import).

    Also switches huggingface_hub's telemetry off (its user-agent lookups call the public
    Hub): the connected side may be a network where only the Hub or a mirror is allowed.
    """
    constants.HF_HUB_DISABLE_TELEMETRY = True
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


class HashingWriter:
    """A file opened for append that hashes what is written, including what it held before.

    http_get may rewind and truncate (a server that ignored Range); the hash is then rebuilt
    from the bytes that remain, so it always covers exactly the file's content.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._rehash()

    def _rehash(self) -> None:
        end = self._file.tell()
        self.digest = hashlib.sha256()
        self._file.seek(0)
        remaining = end
        while remaining:
            chunk = self._file.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                break
            self.digest.update(chunk)
            remaining -= len(chunk)
        self._file.seek(end)

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        result = self._file.truncate(size)
        self._file.flush()
        self._rehash()
        return result


@dataclass(frozen=True)
class _Resolved:
    location: str  # where to GET the bytes (the Hub, or a CDN it redirects to)
    headers: dict[str, str]
    size: int | None
    commit: str | None


def _resolve(repo: str, revision: str, path: str) -> _Resolved:
    """HEAD of the file: its size, commit and download location (huggingface_hub's metadata)."""
    endpoint = hub_endpoint()
    url = hf_hub_url(repo, path, revision=revision, endpoint=endpoint)
    metadata = get_hf_file_metadata(url, endpoint=endpoint, retry_on_errors=True)
    location = metadata.location or url
    headers = build_hf_headers()
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a CDN's signed URL: never forward the token
    return _Resolved(location, headers, metadata.size, metadata.commit_hash)


def download_file(
    repo: str, revision: str, entry: ManifestFile, partial: Path, final: Path
) -> None:
    """Fetches one file of `repo` at `revision` to `final`, resuming `partial` if present.

    Raises `FileVerificationError` (naming the file, expected and actual) on a size or sha256
    mismatch; a corrupt partial file is removed, since resuming it could never succeed.
    """
    resolved = _resolve(repo, revision, entry.path)
    if resolved.commit is not None and resolved.commit != revision:
        raise WeightsError(
            f"{entry.path}: the server answered for commit {resolved.commit}, "
            f"not the pinned revision {revision}"
        )
    if resolved.size is not None and resolved.size != entry.size:
        raise FileVerificationError.mismatch(entry.path, "size", entry.size, resolved.size)

    partial.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists() and partial.stat().st_size > entry.size:
        partial.unlink()
    with open(partial, "a+b") as f:
        f.seek(0, os.SEEK_END)
        writer = HashingWriter(f)
        try:
            http_get(
                resolved.location,
                writer,  # type: ignore[arg-type]
                resume_size=f.tell(),
                headers=resolved.headers,
                expected_size=entry.size,
                displayed_filename=entry.path,
            )
        except OSError as exc:
            if "Consistency check failed" not in str(exc):
                raise
        size = f.tell()
        actual = writer.digest.hexdigest()
    if size != entry.size:
        if size > entry.size:
            partial.unlink()
        raise FileVerificationError.mismatch(entry.path, "size", entry.size, size)
    if actual != entry.sha256:
        partial.unlink()
        raise FileVerificationError.mismatch(entry.path, "sha256", entry.sha256, actual)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)


def fetch_bytes(repo: str, revision: str, path: str) -> bytes:
    """A small file of `repo` at `revision`, in memory (lock hashes non-LFS files this way)."""
    resolved = _resolve(repo, revision, path)
    buffer = io.BytesIO()
    http_get(
        resolved.location,
        buffer,
        headers=resolved.headers,
        expected_size=resolved.size,
        displayed_filename=path,
    )
    return buffer.getvalue()
