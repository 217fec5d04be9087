"""Benchmark: `image` for 1 GB of weights against a plain `docker build` copying the same files.

Generates 1 GB of weight files (kept between runs) with a local manifest, then times, on the
same base image in the local Docker engine (best of --repeat):
  - build_model_image(..., load=True): one reproducible layer per file, sha256-checked, loaded
    into the engine (only the new layers are sent);
  - docker build --no-cache of `FROM base` + `COPY --chown=65532:65532 weights/ /models/bench/`
    (classic builder unless buildx is installed).
Prints both times, their ratio, and whether two `image` runs gave the same image ID.

    .venv/bin/python bench/model_image.py [--base IMAGE] [--gb 1] [--files 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from weight_files import generate_weight_files, local_manifest

from zarf_vllm import __version__
from zarf_vllm.model.hashing import sha256_file
from zarf_vllm.model.manifest import ModelManifest
from zarf_vllm.packaging.model_image import backend_tag, build_model_image

IMAGE_TAG = "zarf.internal/zarf-vllm/bench-model-image:image"
DOCKER_TAG = "zarf.internal/zarf-vllm/bench-model-image:docker-build"


def weight_set(directory: Path, total: int, files: int) -> tuple[list[Path], ModelManifest]:
    """config.json plus `files` random weight files, and their manifest."""
    paths = generate_weight_files(directory, total, files, seed=1)
    config = directory / "config.json"
    config.write_text('{"model_type": "llama"}\n')
    paths = [config, *paths]
    return paths, local_manifest(directory, paths, {p.name: sha256_file(p) for p in paths})


def docker_build(base: str, weights: Path) -> float:
    with tempfile.TemporaryDirectory(dir=weights.parent) as tmp:
        context = Path(tmp)
        (context / "weights").mkdir()
        for path in weights.iterdir():
            os.link(path, context / "weights" / path.name)  # same bytes, no copy
        (context / "Dockerfile").write_text(
            f"FROM {base}\nCOPY --chown=65532:65532 weights/ /models/bench/\n"
        )
        env = {**os.environ}
        if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode:
            env["DOCKER_BUILDKIT"] = "0"
        start = time.perf_counter()
        subprocess.run(
            ["docker", "build", "--no-cache", "--quiet", "-t", DOCKER_TAG, str(context)],
            check=True,
            capture_output=True,
            env=env,
        )
        return time.perf_counter() - start


def image(manifest, manifest_path: Path, weights: Path, base: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = build_model_image(manifest, manifest_path, weights, base, IMAGE_TAG, load=True)
    return time.perf_counter() - start, result.config_digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=backend_tag("cpu", __version__))
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/zarf-vllm-bench/image"))
    args = parser.parse_args()
    if subprocess.run(["docker", "image", "inspect", args.base], capture_output=True).returncode:
        sys.exit(f"base image {args.base} is not in the Docker engine (scripts/build-images)")

    weights = args.dir / "weights"
    paths, manifest = weight_set(weights, int(args.gb * 1e9), args.files)
    total = sum(p.stat().st_size for p in paths)
    manifest_path = args.dir / "bench.yaml"
    manifest_path.write_text(manifest.model_dump_json())
    print(f"{len(paths)} files, {total / 1e9:.2f} GB, base {args.base}")

    image_times, ids, docker_times = [], set(), []
    try:
        for _ in range(args.repeat):
            seconds, image_id = image(manifest, manifest_path, weights, args.base)
            image_times.append(seconds)
            ids.add(image_id)
            subprocess.run(["docker", "rmi", IMAGE_TAG], capture_output=True)
            docker_times.append(docker_build(args.base, weights))
            subprocess.run(["docker", "rmi", DOCKER_TAG], capture_output=True)
    finally:
        subprocess.run(["docker", "rmi", IMAGE_TAG, DOCKER_TAG], capture_output=True)
        shutil.rmtree(args.dir / "tmp", ignore_errors=True)
    t_image, t_docker = min(image_times), min(docker_times)
    print(f"image        {t_image:6.1f} s  (runs: {', '.join(f'{t:.1f}' for t in image_times)})")
    print(f"docker build {t_docker:6.1f} s  (runs: {', '.join(f'{t:.1f}' for t in docker_times)})")
    print(f"image / docker build = {t_image / t_docker:.2f}")
    print(f"same image ID on every image run: {len(ids) == 1} ({ids.pop()})")


if __name__ == "__main__":
    main()
