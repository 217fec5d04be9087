"""The error every recipe raises for an expected failure."""

from __future__ import annotations


class RecipeError(Exception):
    """A recipe that cannot run: unknown name, download failure, unexpected wheel content."""
