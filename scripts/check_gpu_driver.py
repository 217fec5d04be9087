"""The driver check of scripts/check-gpu-node, run inside the cuda image on a GPU node: NVML
(the driver's library, mounted by the NVIDIA container runtime) against the two facts the image
carries from its build (images/cuda_facts.py): the CUDA version its torch was built for and the
oldest driver branch for it. Prints one line; exits 1, with the reason, when the driver is too
old or absent. Needs only the image's pynvml (nvidia-ml-py).
"""

from __future__ import annotations

import os
import sys

import pynvml


def gpus() -> list[str]:
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    return [
        f"{pynvml.nvmlDeviceGetName(h)} {pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20} MiB"
        for h in handles
    ]


def main() -> int:
    need_cuda = os.environ["ZARF_VLLM_CUDA_VERSION"]
    need_driver = int(os.environ["ZARF_VLLM_CUDA_MIN_DRIVER"])
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        sys.exit(f"NVML: {exc}: no NVIDIA driver in the container (is the NVIDIA runtime set up?)")
    driver = pynvml.nvmlSystemGetDriverVersion()
    cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()  # e.g. 13000 for 13.0
    found = gpus()
    pynvml.nvmlShutdown()
    major, minor = (int(x) for x in need_cuda.split(".")[:2])
    print(
        f"driver {driver} (CUDA {cuda // 1000}.{cuda % 1000 // 10}); the image needs CUDA "
        f"{need_cuda}, driver >= {need_driver}; GPUs: {', '.join(found) or 'none'}"
    )
    if int(driver.split(".")[0]) < need_driver or cuda < major * 1000 + minor * 10:
        sys.exit(f"the driver {driver} is older than the image needs (>= {need_driver})")
    if not found:
        sys.exit("NVML sees no GPU in the container")
    return 0


if __name__ == "__main__":
    sys.exit(main())
