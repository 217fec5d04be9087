"""Errors of the weights pipeline; each message names the file and what was expected."""

from __future__ import annotations


class WeightsError(Exception):
    """A weights directory or download that does not match its manifest."""


class FileVerificationError(WeightsError):
    """One file is missing, or its size or sha256 is not the manifest's; `path` names it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path

    @classmethod
    def mismatch(
        cls, path: str, what: str, expected: object, actual: object
    ) -> FileVerificationError:
        return cls(path, f"{what} mismatch: expected {expected}, actual {actual}")

    @classmethod
    def missing(cls, path: str, directory: object) -> FileVerificationError:
        return cls(path, f"missing from {directory}")


class ArchitectureMismatchError(WeightsError):
    """config.json disagrees with the manifest's architecture facts."""


class UnlockedManifestError(WeightsError):
    """The manifest does not record exact files yet; run `lock` on a connected machine."""
