"""The CUDA facts of a cuda-flavor lock: the CUDA version its torch wheel was built for, and the
oldest NVIDIA driver that runs it. scripts/build-images writes them into the image's labels;
scripts/check-gpu-node checks a node's driver against them.

    python3 images/cuda_facts.py LOCK    prints CUDA_VERSION=... and CUDA_MIN_DRIVER=...

Standard library only: operators run it without the project's venv.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

# The oldest driver branch per CUDA major, by NVIDIA's CUDA minor version compatibility table
# (R580 "supports CUDA 13.x through CUDA minor version compatibility"): a runtime of that
# major, any minor, runs on it.
# The wheels carry no driver figure of their own, only the CUDA version they were built for.
MIN_DRIVER_BY_CUDA_MAJOR = {"13": 580}


def torch_wheel(lock: Path) -> Path:
    for line in lock.read_text().splitlines():
        if line.startswith("torch==") and "# " in line:
            return lock.parent / line.rsplit("# ", 1)[1]
    sys.exit(f"cuda_facts: {lock} pins no torch wheel; build the cuda wheelhouse first")


def cuda_version(wheel: Path) -> str:
    """torch.version.cuda as the wheel records it (torch/version.py), read without importing."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read("torch/version.py").decode()
    found = re.search(r"^cuda: .*= '([0-9.]+)'$", text, re.MULTILINE)
    if not found:
        sys.exit(f"cuda_facts: {wheel.name} is not a CUDA build of torch (no torch.version.cuda)")
    return found.group(1)


def main() -> int:
    if len(sys.argv) != 2:
        sys.exit("usage: cuda_facts.py LOCK")
    version = cuda_version(torch_wheel(Path(sys.argv[1])))
    major = version.split(".")[0]
    if major not in MIN_DRIVER_BY_CUDA_MAJOR:
        sys.exit(f"cuda_facts: no minimum driver known for CUDA {version}; add it above")
    print(f"CUDA_VERSION={version}")
    print(f"CUDA_MIN_DRIVER={MIN_DRIVER_BY_CUDA_MAJOR[major]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
