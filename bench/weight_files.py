"""Synthetic weight files for the pipeline benchmarks: random bytes on disk, and a local
manifest naming them. Kept between runs (regenerated only when a file's size is wrong), so
repeated benchmark runs spend their time measuring, not writing."""

from __future__ import annotations

import random
from pathlib import Path

from zarf_vllm.model.manifest import Architecture, LocalSource, ManifestFile, ModelManifest

CHUNK = 16 * 1024 * 1024

# The benchmarks never load these files into an engine, so the architecture facts only need to
# pass the manifest's validation.
PLACEHOLDER_ARCHITECTURE = Architecture(
    model_type="llama",
    parameters=1,
    layers=1,
    hidden_size=1,
    intermediate_size=1,
    attention_heads=1,
    kv_heads=1,
    head_dim=1,
    vocab_size=1,
    max_position_embeddings=1,
    weight_dtype="bfloat16",
    tied_embeddings=False,
)


def generate_weight_files(directory: Path, total_bytes: int, files: int, seed: int) -> list[Path]:
    """`files` safetensors-named files of random bytes, `total_bytes` in all."""
    directory.mkdir(parents=True, exist_ok=True)
    size = total_bytes // files
    rng = random.Random(seed)
    paths = []
    for i in range(files):
        path = directory / f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as f:
                left = size
                while left:
                    n = min(CHUNK, left)
                    f.write(rng.randbytes(n))
                    left -= n
        paths.append(path)
    return paths


def local_manifest(directory: Path, paths: list[Path], digests: dict[str, str]) -> ModelManifest:
    """A manifest for weights in `directory`, with `digests` mapping file name to sha256."""
    return ModelManifest(
        id="bench",
        display_name="benchmark weights",
        license="none",
        source=LocalSource(kind="local", path=str(directory)),
        files=[
            ManifestFile(path=p.name, size=p.stat().st_size, sha256=digests[p.name]) for p in paths
        ],
        architecture=PLACEHOLDER_ARCHITECTURE,
    )
