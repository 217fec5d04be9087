"""The local Docker engine as the model image's base and destination, without copying the base.

Exporting the multi-GB backend image out of the engine (skopeo, docker save) and streaming it
back in costs minutes, though the engine already holds every one of its layers. So:

- the base's config comes from `docker image inspect` (its env, entrypoint, labels, user and
  layer diff IDs), not from an export;
- the image goes back in with `docker load` of a docker-archive stream that carries only the
  new layers: `docker load` extracts a layer only when it does not already hold the layer's
  chain, so the base's layers are named in the archive's manifest but never sent.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zarf_vllm.packaging.oci_layout import COPY_BUFFER, CountingWriter, Descriptor, Layout

# The keys of an image config's "config" object (OCI image spec, plus Docker's additions);
# `docker image inspect` also shows container-only fields (Hostname, Tty, ...).
IMAGE_CONFIG_KEYS = (
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "ArgsEscaped",
    "Healthcheck",
    "OnBuild",
    "Shell",
)


class DockerError(Exception):
    """The Docker engine is not reachable or refused an image."""


def _docker(*args: str, stdin: Any = None) -> subprocess.CompletedProcess[bytes]:
    try:
        result = subprocess.run(["docker", *args], input=stdin, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise DockerError("docker is not installed (scripts/docker-engine sets it up)") from exc
    if result.returncode != 0:
        raise DockerError(f"docker {args[0]}: {result.stderr.decode().strip()[-2000:]}")
    return result


@dataclass(frozen=True)
class EngineImage:
    image_id: str
    config: dict[str, Any]  # an image config (architecture, os, config, rootfs)


def inspect_base(ref: str) -> EngineImage:
    """An image config for `ref` rebuilt from `docker image inspect` (no history: the new
    image's layers keep their order and diff IDs, which is what the engine checks)."""
    info = json.loads(_docker("image", "inspect", ref).stdout)[0]
    inner = {
        key: value
        for key, value in (info.get("Config") or {}).items()
        if key in IMAGE_CONFIG_KEYS and value not in (None, [], {}, "")
    }
    config = {
        "architecture": info.get("Architecture", "amd64"),
        "os": info.get("Os", "linux"),
        "config": inner,
        "rootfs": {"type": "layers", "diff_ids": list(info["RootFS"]["Layers"])},
    }
    if info.get("Variant"):
        config["variant"] = info["Variant"]
    return EngineImage(info["Id"], config)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def load(
    layout: Layout,
    config: Descriptor,
    layers: list[Descriptor | None],
    tag: str,
) -> None:
    """`docker load` of the image whose config blob is `config`: `layers` lines up with the
    config's diff IDs; None marks a layer the engine already holds (not sent)."""
    config_bytes = layout.blob_path(config.digest).read_bytes()
    diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
    if len(diff_ids) != len(layers):
        raise DockerError(f"{len(layers)} layers for {len(diff_ids)} diff IDs")
    names = [f"{diff_id.split(':', 1)[1]}/layer.tar" for diff_id in diff_ids]
    manifest = [{"Config": "config.json", "RepoTags": [tag], "Layers": names}]
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(
        ["docker", "load", "--quiet"],
        stdin=read_fd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(read_fd)
    try:
        with (
            os.fdopen(write_fd, "wb") as pipe,
            tarfile.open(
                fileobj=CountingWriter(pipe, digest=False), mode="w", copybufsize=COPY_BUFFER
            ) as tar,
        ):
            _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
            _add_bytes(tar, "config.json", config_bytes)
            for name, descriptor in _present(names, layers):
                tar.add(layout.blob_path(descriptor.digest), arcname=name, recursive=False)
    except BrokenPipeError:
        pass  # docker load failed early; its stderr says why
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise DockerError(f"docker load of {tag}: {stderr.decode().strip()[-2000:]}")


def _present(names: list[str], layers: list[Descriptor | None]) -> Iterable[tuple[str, Descriptor]]:
    for name, descriptor in zip(names, layers, strict=True):
        if descriptor is not None:
            yield name, descriptor
