"""Test helpers for the weights pipeline: small model directories with manifests, and a local
HTTP server that speaks the slice of the Hugging Face Hub API huggingface_hub 2.4 uses.

The server (`FakeHub`) answers, on 127.0.0.1:
- GET  /api/models/{repo}[/revision/{rev}]   model info (sha, siblings with size and LFS sha256)
- HEAD /{repo}/resolve/{rev}/{path}           ETag, X-Repo-Commit, Content-Length (and the LFS
                                              X-Linked-Etag/X-Linked-Size), no Xet headers
- GET  /{repo}/resolve/{rev}/{path}           the bytes, honouring `Range: bytes=N-` with 206
It records every request, can corrupt a file's bytes, cut a download short once (an
interrupted transfer) and demand a bearer token.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from zarf_vllm.model.manifest import (
    Architecture,
    HuggingFaceSource,
    LocalSource,
    ManifestFile,
    ModelManifest,
)

TINY_ARCHITECTURE = Architecture(
    model_type="llama",
    parameters=4096,
    layers=2,
    hidden_size=64,
    intermediate_size=128,
    attention_heads=4,
    kv_heads=2,
    head_dim=16,
    vocab_size=256,
    max_position_embeddings=512,
    weight_dtype="float32",
    tied_embeddings=False,
)
TINY_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "torch_dtype": "float32",
    "tie_word_embeddings": False,
}


def safetensors_bytes(tensors: dict[str, int], seed: int = 0) -> bytes:
    """A valid safetensors file of float32 vectors {name: elements}, random content."""
    rng = random.Random(seed)
    header, offset = {}, 0
    for name, count in tensors.items():
        header[name] = {
            "dtype": "F32",
            "shape": [count],
            "data_offsets": [offset, offset + 4 * count],
        }
        offset += 4 * count
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + rng.randbytes(offset)


def tiny_model_files(weight_bytes: int = 1 << 20, seed: int = 0) -> dict[str, bytes]:
    """{path: bytes} of a small model: config, tokenizer stand-in, two safetensors shards whose
    float parameters add up to TINY_ARCHITECTURE.parameters, and an opaque weights blob."""
    half = TINY_ARCHITECTURE.parameters // 2
    return {
        "config.json": json.dumps(TINY_CONFIG, indent=2).encode(),
        "tokenizer.json": json.dumps({"model": {"vocab": {"a": 0}}}).encode(),
        "model-00001-of-00002.safetensors": safetensors_bytes({"a": half}, seed),
        "model-00002-of-00002.safetensors": safetensors_bytes({"b": half}, seed + 1),
        "extra/blob.bin": random.Random(seed + 2).randbytes(weight_bytes),
    }


def manifest_files(files: dict[str, bytes]) -> list[ManifestFile]:
    return [
        ManifestFile(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        for path, data in sorted(files.items())
    ]


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_bytes(data)
    return directory


def local_manifest(directory: Path, files: dict[str, bytes], id: str = "tiny") -> ModelManifest:
    return ModelManifest(
        id=id,
        display_name="Tiny test model",
        license="Apache-2.0",
        source=LocalSource(kind="local", path=str(directory)),
        files=manifest_files(files),
        architecture=TINY_ARCHITECTURE,
    )


def hub_manifest(
    repo: str, revision: str | None, files: dict[str, bytes] | None, id: str = "tiny"
) -> ModelManifest:
    return ModelManifest(
        id=id,
        display_name="Tiny test model",
        license="Apache-2.0",
        source=HuggingFaceSource(kind="huggingface", repo=repo, revision=revision),
        files=manifest_files(files) if files is not None else None,
        architecture=TINY_ARCHITECTURE,
    )


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    revision: str
    branch: str = "main"
    lfs_suffixes: tuple[str, ...] = (".safetensors", ".bin")


@dataclass
class FakeHub:
    """State of the fake Hub; tests mutate it between requests."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    token: str | None = None  # when set, every request must carry `Bearer <token>`
    corrupt: set[str] = field(default_factory=set)  # paths served with one byte flipped
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes, once
    requests: list[tuple[str, str, dict[str, str]]] = field(
        default_factory=list
    )  # lower-case names
    url: str = ""

    def add_repo(self, name: str, files: dict[str, bytes], revision: str | None = None) -> str:
        revision = (
            revision or hashlib.sha1(name.encode() + repr(sorted(files)).encode()).hexdigest()
        )
        self.repos[name] = FakeRepo(files=dict(files), revision=revision)
        return revision

    def gets(self, path: str) -> list[dict[str, str]]:
        """Headers of every GET for a file path."""
        return [h for m, p, h in self.requests if m == "GET" and p.endswith("/" + path)]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(
            status,
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                **(headers or {}),
            },
            body,
        )

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def _authorized(self) -> bool:
        if (
            self.hub.token is None
            or self.headers.get("Authorization") == f"Bearer {self.hub.token}"
        ):
            return True
        self._error(401, "Invalid credentials", "RepoNotFound")
        return False

    def _repo_at(self, name: str, revision: str) -> FakeRepo | None:
        repo = self.hub.repos.get(name)
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        if revision not in (repo.revision, repo.branch):
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return None
        return repo

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.hub.requests.append((self.command, self.path, headers))
        if not self._authorized():
            return
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/api/models/"):
            self._model_info(path[len("/api/models/") :])
        elif "/resolve/" in path:
            repo_name, rest = path.lstrip("/").split("/resolve/", 1)
            revision, file_path = rest.split("/", 1)
            self._file(repo_name, revision, file_path)
        else:
            self._error(404, "not found")

    def _model_info(self, rest: str) -> None:
        name, _, revision = rest.partition("/revision/")
        repo = self._repo_at(name, revision or "main")
        if repo is None:
            return
        siblings = []
        for path, data in sorted(repo.files.items()):
            sibling: dict[str, object] = {"rfilename": path, "size": len(data)}
            sibling["blobId"] = hashlib.sha1(data).hexdigest()
            if path.endswith(repo.lfs_suffixes):
                sibling["lfs"] = {
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "pointerSize": 134,
                }
            siblings.append(sibling)
        self._json(200, {"id": name, "modelId": name, "sha": repo.revision, "siblings": siblings})

    def _file(self, name: str, revision: str, file_path: str) -> None:
        repo = self._repo_at(name, revision)
        if repo is None:
            return
        data = repo.files.get(file_path)
        commit = {"X-Repo-Commit": repo.revision}
        if data is None:
            self._error(404, "Entry not found", "EntryNotFound")
            return
        if file_path in self.hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        digest = hashlib.sha256(data).hexdigest()
        headers = {**commit, "ETag": f'"{digest}"', "Accept-Ranges": "bytes"}
        if file_path.endswith(repo.lfs_suffixes):
            headers |= {"X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data))}
        start = 0
        range_header = self.headers.get("Range")
        if self.command == "GET" and range_header and range_header.startswith("bytes="):
            start = int(range_header[len("bytes=") :].split("-")[0])
        body = data[start:]
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        cut = self.hub.cut_after.pop(file_path, None) if self.command == "GET" else None
        if cut is not None:
            # Announce the whole body, send part of it, drop the connection: an interrupted
            # transfer as the client sees it.
            self.send_response(206 if start else 200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(206 if start else 200, headers, body)


@dataclass
class RunningHub:
    hub: FakeHub
    server: ThreadingHTTPServer

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


def serve_hub(hub: FakeHub) -> Iterator[RunningHub]:
    """Runs the fake Hub on 127.0.0.1 (a free port) until the generator is closed."""
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    running = RunningHub(hub, server)
    hub.url = running.url
    try:
        yield running
    finally:
        server.shutdown()
        server.server_close()
