"""The backend container of the chart's Deployment, as `docker run` settings.

The container tests start the model image with what `scripts/preview --set PROFILE=cpu`
renders, read from its output rather than restated here: user and groups, read-only root,
dropped capabilities, no privilege escalation, env and args, a tmpfs where the pod mounts an
emptyDir, the ConfigMap files where it mounts a ConfigMap, CPU and memory limits, the startup
probe's time budget and the termination grace period. Anything the translation does not know
(another volume kind, an env var from a secret) is an error, never silently dropped.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from testcontainers.core.container import DockerContainer

from support.paths import REPO

ROOT = REPO

_MEMORY_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


class UnsupportedSetting(ValueError):
    """The Deployment uses something these tests cannot reproduce with Docker."""


def memory_bytes(quantity: str | int) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?)?", str(quantity))
    if not match:
        raise UnsupportedSetting(f"memory quantity {quantity!r}")
    return int(float(match[1]) * _MEMORY_UNITS[match[2] or ""])


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclass
class BackendContainer:
    """The settings of the Deployment's backend container that a `docker run` can carry."""

    image: str
    command: list[str] | None
    args: list[str]
    env: dict[str, str]
    user: str
    group_add: list[str]
    read_only_root: bool
    cap_drop: list[str]
    cap_add: list[str]
    no_new_privileges: bool
    tmpfs: dict[str, str]  # mount path -> tmpfs options
    files: dict[str, dict[str, str]]  # mount path -> {file name: content} (ConfigMaps)
    cpu_limit: float
    memory_limit: int
    grpc_port: int
    startup_budget_s: float  # what the startupProbe allows before the kubelet restarts it
    termination_grace_s: int
    notes: list[str] = field(default_factory=list)

    def testcontainer(self, image: str, files_root: Path, **extra: Any) -> DockerContainer:
        """A testcontainers container of `image` with these settings (not started), plus the
        docker-py `extra` arguments. The ConfigMap files are written under files_root and
        bind-mounted read-only where the pod mounts them."""
        container = DockerContainer(image).with_command(self.args).with_envs(**self.env)
        for mount_path, entries in self.files.items():
            host_dir = files_root / mount_path.strip("/").replace("/", "_")
            host_dir.mkdir(parents=True, exist_ok=True)
            host_dir.chmod(0o755)
            for name, content in entries.items():
                (host_dir / name).write_text(content)
                (host_dir / name).chmod(0o644)
            container.with_volume_mapping(host_dir, mount_path, "ro")
        container.tmpfs.update(self.tmpfs)
        cpus = min(self.cpu_limit, float(os.cpu_count() or 1))
        if cpus < self.cpu_limit:
            self.notes.append(f"CPU limit {self.cpu_limit:g} capped at this host's {cpus:g} CPUs")
        kwargs: dict[str, Any] = {
            "user": self.user,
            "group_add": self.group_add,
            "read_only": self.read_only_root,
            "cap_drop": self.cap_drop,
            "cap_add": self.cap_add,
            "security_opt": ["no-new-privileges"] if self.no_new_privileges else [],
            "nano_cpus": int(cpus * 1e9),
            "mem_limit": self.memory_limit,
            "memswap_limit": self.memory_limit,  # no swap, as under a kubelet
        }
        if self.command is not None:
            kwargs["entrypoint"] = self.command
        return container.with_kwargs(**kwargs, **extra)


def preview_objects(*sets: str) -> list[dict[str, Any]]:
    """The objects `scripts/preview --set ...` prints."""
    argv = [str(ROOT / "scripts/preview")]
    for assignment in sets:
        argv += ["--set", assignment]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/preview {' '.join(sets)} failed: {done.stderr[-2000:]}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o.get("kind") == kind]
    if len(found) != 1:
        raise UnsupportedSetting(f"expected one {kind}, found {len(found)}")
    return found[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for var in container.get("env", []):
        if "value" not in var:
            raise UnsupportedSetting(f"env {var['name']} is not a plain value: {var}")
        env[var["name"]] = str(var["value"])
    if container.get("envFrom"):
        raise UnsupportedSetting(f"envFrom: {container['envFrom']}")
    return env


def _mounts(
    pod: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]]
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_maps = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "ConfigMap"}
    tmpfs: dict[str, str] = {}
    files: dict[str, dict[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if mount.get("subPath"):
            raise UnsupportedSetting(f"subPath mount {mount}")
        if "emptyDir" in volume:
            # An emptyDir is writable by the pod's users and allows exec (Docker's tmpfs
            # default is noexec); its sizeLimit becomes the tmpfs size.
            options = ["rw", "exec", "nosuid", "nodev", "mode=1777"]
            if limit := (volume["emptyDir"] or {}).get("sizeLimit"):
                options.append(f"size={memory_bytes(limit)}")
            tmpfs[mount["mountPath"]] = ",".join(options)
        elif "configMap" in volume:
            data = config_maps[volume["configMap"]["name"]].get("data", {})
            items = volume["configMap"].get("items")
            chosen = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
            files[mount["mountPath"]] = chosen
        else:
            raise UnsupportedSetting(f"volume kind of {volume}")
    return tmpfs, files


def backend_container(objects: list[dict[str, Any]]) -> BackendContainer:
    deployment = _one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    containers = pod["containers"]
    if len(containers) != 1 or pod.get("initContainers"):
        raise UnsupportedSetting("expected exactly one container and no init containers")
    container = containers[0]
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    if security.get("privileged") or any(p.get("hostPort") for p in container["ports"]):
        raise UnsupportedSetting("privileged containers and host ports are not reproduced")
    capabilities = security.get("capabilities", {})
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" not in limits or "memory" not in limits:
        raise UnsupportedSetting(f"the container has no CPU or memory limit: {limits}")
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    probe = container["startupProbe"]
    tmpfs, files = _mounts(pod, container, objects)
    return BackendContainer(
        image=container["image"],
        command=container.get("command"),
        args=list(container.get("args", [])),
        env=_env(container),
        user=f"{security['runAsUser']}:{security['runAsGroup']}",
        group_add=[str(security["fsGroup"])] if "fsGroup" in security else [],
        read_only_root=bool(security.get("readOnlyRootFilesystem")),
        cap_drop=list(capabilities.get("drop", [])),
        cap_add=list(capabilities.get("add", [])),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        tmpfs=tmpfs,
        files=files,
        cpu_limit=cpu_cores(limits["cpu"]),
        memory_limit=memory_bytes(limits["memory"]),
        grpc_port=grpc_port,
        startup_budget_s=float(
            probe.get("initialDelaySeconds", 0)
            + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        ),
        termination_grace_s=int(pod.get("terminationGracePeriodSeconds", 30)),
    )
