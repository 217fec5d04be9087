"""Fetch a pinned wheel with pip and read members out of it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from zarf_vllm.model.hashing import sha256_file
from zarf_vllm.packaging.recipes.errors import RecipeError


def fetch_wheel(requirement: str, cache_dir: Path, sha256: str | None = None) -> Path:
    """The wheel of `name==version`, from `cache_dir` or `pip download --no-deps`.

    The venv's own pip (`sys.executable -m pip`) honours the machine's index settings. With
    `sha256` the wheel must have exactly that hash, cached or not.
    """
    slot = cache_dir / "wheels" / requirement.replace("==", "-")
    cached = sorted(slot.glob("*.whl"))
    if cached and (sha256 is None or sha256_file(cached[0]) == sha256):
        return cached[0]
    slot.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=slot) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            tmp,
            requirement,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise RecipeError(
                f"pip download {requirement} failed (exit {result.returncode}): "
                f"{result.stderr.strip()[-2000:]}"
            )
        actual = sha256_file(wheels[0])
        if sha256 is not None and actual != sha256:
            raise RecipeError(
                f"{wheels[0].name}: sha256 mismatch: expected {sha256}, actual {actual}"
            )
        for old in cached:
            old.unlink()
        target = slot / wheels[0].name
        shutil.move(wheels[0], target)
    return target


def wheel_members(wheel: Path, prefix: str) -> list[str]:
    """Names of the files under `prefix/` in the wheel, relative to it."""
    prefix = prefix.rstrip("/") + "/"
    with zipfile.ZipFile(wheel) as archive:
        return sorted(
            name[len(prefix) :]
            for name in archive.namelist()
            if name.startswith(prefix) and not name.endswith("/")
        )


def extract(wheel: Path, member: str, target: Path) -> Path:
    """Copies one file out of the wheel to `target` (a file path); returns it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        try:
            source = archive.open(member)
        except KeyError:
            raise RecipeError(f"{wheel.name} has no member {member!r}") from None
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 4 * 1024 * 1024)
    return target
