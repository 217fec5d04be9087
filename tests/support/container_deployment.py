"""The backend container of the chart's Deployment, as `docker run` settings.

The container tests start the model image with what `scripts/preview --set PROFILE=cpu`
renders, read from its output rather than restated here: user and groups, read-only root,
dropped capabilities, no privilege escalation, env and args, a tmpfs where the pod mounts an
emptyDir, the ConfigMap files where it mounts a ConfigMap, the Secret files and env values the
test supplies for the Secrets it names (the cluster's, which the chart only references), CPU
and memory limits, the ports, the startup probe's time budget and the termination grace
period. Anything the translation does not know (another volume kind, a Secret the test did not
supply) is an error, never silently dropped.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
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


# Secret name -> {key: value}: what the cluster's Secrets would hold.
Secrets = Mapping[str, Mapping[str, str]]


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
    # mount path -> ({file name: content}, file mode): Secret volumes, owned by the pod's user
    secret_files: dict[str, tuple[dict[str, str], int]]
    cpu_limit: float
    memory_limit: int
    grpc_port: int
    ports: dict[str, int]  # the container's ports by name (grpc, openai, health, lora-0, ...)
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
        for mount_path, (entries, mode) in self.secret_files.items():
            # As the kubelet writes a Secret volume: the files in defaultMode, group fsGroup
            # (the tests run as root, so chown stands in for that).
            host_dir = files_root / ("secret" + mount_path.replace("/", "_"))
            host_dir.mkdir(parents=True, exist_ok=True)
            host_dir.chmod(0o755)
            uid, gid = (int(part) for part in self.user.split(":"))
            for name, content in entries.items():
                (host_dir / name).write_text(content)
                os.chown(host_dir / name, uid, gid)
                (host_dir / name).chmod(mode)
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


def preview_objects(*sets: str, manifest: Path | None = None) -> list[dict[str, Any]]:
    """The objects `scripts/preview [--manifest FILE] --set ...` prints."""
    argv = [str(ROOT / "scripts/preview")]
    if manifest is not None:
        argv += ["--manifest", str(manifest)]
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


def _secret(secrets: Secrets, name: str) -> Mapping[str, str]:
    if name not in secrets:
        raise UnsupportedSetting(
            f"the Deployment uses Secret {name!r}, which the test did not supply"
        )
    return secrets[name]


def _env(container: dict[str, Any], secrets: Secrets) -> dict[str, str]:
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif ref := var.get("valueFrom", {}).get("secretKeyRef"):
            env[var["name"]] = _secret(secrets, ref["name"])[ref["key"]]
        else:
            raise UnsupportedSetting(f"env {var['name']} is neither a value nor a Secret's: {var}")
    if container.get("envFrom"):
        raise UnsupportedSetting(f"envFrom: {container['envFrom']}")
    return env


@dataclass
class _Mounts:
    tmpfs: dict[str, str]
    files: dict[str, dict[str, str]]
    secret_files: dict[str, tuple[dict[str, str], int]]


def _mounts(
    pod: dict[str, Any], container: dict[str, Any], objects: list[dict[str, Any]], secrets: Secrets
) -> _Mounts:
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_maps = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "ConfigMap"}
    tmpfs: dict[str, str] = {}
    files: dict[str, dict[str, str]] = {}
    secret_files: dict[str, tuple[dict[str, str], int]] = {}
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
        elif "secret" in volume:
            source = volume["secret"]
            data = _secret(secrets, source["secretName"])
            items = source.get("items")
            chosen = {i["path"]: data[i["key"]] for i in items} if items else dict(data)
            secret_files[mount["mountPath"]] = (chosen, source.get("defaultMode", 0o644))
        else:
            raise UnsupportedSetting(f"volume kind of {volume}")
    return _Mounts(tmpfs, files, secret_files)


def backend_container(
    objects: list[dict[str, Any]], secrets: Secrets | None = None
) -> BackendContainer:
    """The Deployment's backend container; `secrets` holds what the Secrets it names contain."""
    secrets = secrets or {}
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
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["startupProbe"]
    mounts = _mounts(pod, container, objects, secrets)
    return BackendContainer(
        image=container["image"],
        command=container.get("command"),
        args=list(container.get("args", [])),
        env=_env(container, secrets),
        user=f"{security['runAsUser']}:{security['runAsGroup']}",
        group_add=[str(security["fsGroup"])] if "fsGroup" in security else [],
        read_only_root=bool(security.get("readOnlyRootFilesystem")),
        cap_drop=list(capabilities.get("drop", [])),
        cap_add=list(capabilities.get("add", [])),
        no_new_privileges=security.get("allowPrivilegeEscalation") is False,
        tmpfs=mounts.tmpfs,
        files=mounts.files,
        secret_files=mounts.secret_files,
        cpu_limit=cpu_cores(limits["cpu"]),
        memory_limit=memory_bytes(limits["memory"]),
        grpc_port=ports["grpc"],
        ports=ports,
        startup_budget_s=float(
            probe.get("initialDelaySeconds", 0)
            + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        ),
        termination_grace_s=int(pod.get("terminationGracePeriodSeconds", 30)),
    )
