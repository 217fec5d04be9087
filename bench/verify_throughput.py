"""Benchmark: sha256 verification throughput of `verify_directory` against `sha256sum`.

Generates a few-GB set of random weight files (kept between runs), warms the page cache, then
measures (best of --repeat):
  - sha256sum: one process hashing the files one after another (what a single-file
    `sha256sum` achieves: one core); the target's baseline;
  - openssl dgst -sha256, the same way: a stronger single-core baseline where coreutils'
    sha256sum lacks the CPU's SHA instructions and OpenSSL (like Python's hashlib) uses them;
  - verify_directory(mode="full") with one thread and with every core (threads across files;
    hashlib releases the GIL).
Prints GB/s and the ratio to sha256sum (target: >= 0.8 with all cores).

    .venv/bin/python bench/verify_throughput.py [--gb 4] [--files 8] [--dir DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from weight_files import CHUNK, generate_weight_files, local_manifest

from zarf_vllm.model.hashing import default_workers
from zarf_vllm.model.verify import verify_directory


def warm(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(CHUNK):
                pass


def timed(func) -> tuple[float, object]:
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def sha256sum(paths: list[Path]) -> dict[str, str]:
    out = subprocess.run(
        ["sha256sum", *map(str, paths)], capture_output=True, text=True, check=True
    ).stdout
    return {Path(line.split()[1]).name: line.split()[0] for line in out.splitlines()}


def openssl(paths: list[Path]) -> None:
    subprocess.run(
        ["openssl", "dgst", "-sha256", *map(str, paths)], capture_output=True, check=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.0, help="total size (default 4 GB)")
    parser.add_argument("--files", type=int, default=8, help="number of files (default 8)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/zarf-vllm-bench/verify"))
    args = parser.parse_args()

    total = int(args.gb * 1e9)
    paths = generate_weight_files(args.dir, total, args.files, seed=0)
    total = sum(p.stat().st_size for p in paths)
    warm(paths)
    cores = default_workers()
    print(f"{len(paths)} files, {total / 1e9:.2f} GB, {cores} cores (page cache warm)")

    best: dict[str, float] = {}
    digests: dict[str, str] = {}
    for _ in range(args.repeat):
        seconds, digests = timed(lambda: sha256sum(paths))
        best["sha256sum"] = min(best.get("sha256sum", 1e9), seconds)
    for _ in range(args.repeat):
        seconds, _ = timed(lambda: openssl(paths))
        best["openssl dgst"] = min(best.get("openssl dgst", 1e9), seconds)
    manifest = local_manifest(args.dir, paths, digests)
    for label, workers in (("verify, 1 thread", 1), (f"verify, {cores} threads", cores)):
        for _ in range(args.repeat):
            seconds, _ = timed(
                lambda w=workers: verify_directory(args.dir, manifest, "full", workers=w)
            )
            best[label] = min(best.get(label, 1e9), seconds)

    baseline = total / best["sha256sum"]
    for label, seconds in best.items():
        rate = total / seconds
        print(f"{label:<22} {rate / 1e9:6.2f} GB/s  {seconds:6.2f} s  ratio {rate / baseline:.2f}")
    ratio = total / best[f"verify, {cores} threads"] / baseline
    print(
        f"verify (all cores) / sha256sum = {ratio:.2f} (target >= 0.80): "
        + ("PASS" if ratio >= 0.8 else "FAIL")
    )
    fastest = min(best[f"verify, {cores} threads"], best["verify, 1 thread"])
    print(f"verify (best) / openssl dgst = {best['openssl dgst'] / fastest:.2f}")


if __name__ == "__main__":
    main()
