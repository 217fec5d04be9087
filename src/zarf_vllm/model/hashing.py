"""sha256 of files, in parallel across files.

hashlib releases the GIL while it hashes a buffer, so plain threads use every core when there
are several files; one large file is still hashed by one core (sha256 is sequential).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

CHUNK_BYTES = 4 * 1024 * 1024

T = TypeVar("T")
R = TypeVar("R")


def sha256_file(path: Path | str, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of one file, read into one reused buffer (no per-chunk allocation)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def map_parallel(
    func: Callable[[T], R], items: Iterable[T], workers: int | None = None
) -> Iterator[tuple[T, R]]:
    """Yields (item, func(item)) as they finish; the first exception cancels the rest and raises.

    Largest work first is the caller's choice of order: pass items sorted that way.
    """
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        pending: dict[Future[R], T] = {pool.submit(func, item): item for item in items}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    item = pending.pop(future)
                    yield item, future.result()
        finally:
            for future in pending:
                future.cancel()


def sha256_files(paths: Iterable[Path], workers: int | None = None) -> dict[Path, str]:
    """sha256 of many files, hashing several at once; the largest start first."""
    ordered = sorted(paths, key=lambda p: p.stat().st_size, reverse=True)
    return dict(map_parallel(sha256_file, ordered, workers))
