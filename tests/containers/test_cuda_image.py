"""The CUDA backend image and the demo model's cuda image, checked without a GPU: what they hold
(vLLM's CUDA build, the CUDA build of torch, the CUDA libraries as wheels, the compilers triton
and flashinfer use at first start), their configuration (the CPU image's guarantees plus the
NVIDIA runtime's variables and the CUDA labels), and that `serve` without a GPU stops with one
line that names the missing GPU. Marker `cuda`; see conftest's cuda_backend_image for when these
run. Serving on a GPU is scripts/check-gpu-node's job, on a GPU node.
"""

from __future__ import annotations

import json
import subprocess

import pytest

import zarf_vllm
from support.container_deployment import ROOT
from zarf_vllm.backend.offline import OFFLINE_ENVIRONMENT

pytestmark = pytest.mark.cuda

LOCKED_DOWN = [
    "--rm", "--read-only", "--tmpfs", "/tmp:exec", "--network", "none", "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges", "--user", "65532:65532",
]  # fmt: skip
# The CUDA user-space libraries the CUDA build of torch loads, each from its wheel.
CUDA_WHEELS = ["nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"]

CONTENTS = f"""
import glob, importlib.metadata as md, json, os, sysconfig
import vllm, torch
site = sysconfig.get_paths()["purelib"]
print(json.dumps({{
    "vllm": vllm.__version__,
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
    "wheels": {{name: md.version(name) for name in {CUDA_WHEELS!r}}},
    "libcudart": sorted(os.path.basename(p)
                        for p in glob.glob(site + "/nvidia/**/libcudart.so*", recursive=True)),
    "build_leftovers": [p for p in ("/wheels", "/dist", "/root/.cache/pip") if os.path.exists(p)],
    "uid": os.getuid(),
}}))
"""

# What triton does at its first kernel launch, and flashinfer's JIT likewise: compile a Python
# extension with the system compiler against Python's headers, under /tmp, and load it.
COMPILE = r"""
set -eu
cd /tmp
printf '%s\n' '#include <Python.h>' \
  'static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "probe", NULL, -1, NULL};' \
  'PyMODINIT_FUNC PyInit_probe(void) { return PyModule_Create(&m); }' > probe.c
include=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
gcc probe.c -O2 -shared -fPIC -I"$include" -o probe.so
g++ --version | head -n 1
PYTHONPATH=/tmp /opt/venv/bin/python -c "import probe; print('loaded', probe.__name__)"
"""


def run(image: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess:
    argv = ["docker", "run", *LOCKED_DOWN]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    return subprocess.run(
        [*argv, image, *args], capture_output=True, text=True, timeout=600, check=False
    )


def inspect(image: str) -> dict:
    done = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)[0]["Config"]


@pytest.fixture(scope="module")
def contents(cuda_backend_image: str) -> dict:
    done = run(cuda_backend_image, "-c", CONTENTS, entrypoint="/opt/venv/bin/python")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_it_holds_vllm_the_cuda_torch_and_the_cuda_libraries(
    contents: dict, cuda_report: dict[str, str]
) -> None:
    assert contents["vllm"] == "0.32.0"
    assert contents["torch"].startswith("2.13.0+cu"), contents["torch"]
    assert contents["torch_cuda"] and contents["torch_cuda"].split(".")[0] == "13"
    assert contents["cuda_available"] is False  # no GPU here, and torch says so quietly
    assert set(contents["wheels"]) == set(CUDA_WHEELS)
    assert any(name.startswith("libcudart.so.13") for name in contents["libcudart"])
    assert contents["build_leftovers"] == []
    assert contents["uid"] == 65532
    cuda_report["cuda image: torch"] = f"{contents['torch']} (CUDA {contents['torch_cuda']})"
    cuda_report["cuda image: CUDA wheels"] = ", ".join(
        f"{k} {v}" for k, v in contents["wheels"].items()
    )


def test_the_labels_name_torchs_cuda_and_the_oldest_driver(
    cuda_backend_image: str, contents: dict, cuda_report: dict[str, str]
) -> None:
    config = inspect(cuda_backend_image)
    labels = config["Labels"]
    assert labels["zarf-vllm.cuda.version"] == contents["torch_cuda"]
    # The same two facts where scripts/check-gpu-node reads them, inside the container.
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["ZARF_VLLM_CUDA_VERSION"] == labels["zarf-vllm.cuda.version"]
    assert env["ZARF_VLLM_CUDA_MIN_DRIVER"] == labels["zarf-vllm.cuda.min-driver"]
    # CUDA 13.x runs on the R580 driver branch and newer (NVIDIA's minor version compatibility).
    assert labels["zarf-vllm.cuda.min-driver"] == "580"
    assert labels["org.opencontainers.image.title"] == "zarf-vllm backend (cuda)"
    assert labels["org.opencontainers.image.version"] == zarf_vllm.__version__
    cuda_report["cuda image: minimum driver"] = labels["zarf-vllm.cuda.min-driver"]


def test_the_cpu_images_guarantees_and_the_nvidia_runtimes_variables(
    cuda_backend_image: str,
) -> None:
    config = inspect(cuda_backend_image)
    assert config["User"] == "65532:65532"
    entrypoint = ["/usr/bin/tini", "--", "/opt/venv/bin/python", "-m", "zarf_vllm.backend"]
    assert config["Entrypoint"] == entrypoint
    assert config["Cmd"] == ["serve"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert not set(OFFLINE_ENVIRONMENT) & set(env)  # serve sets them itself
    assert env["HOME"] == "/tmp"
    cache_vars = [k for k in env if k.endswith(("_CACHE", "_CACHE_DIR", "_CACHE_ROOT", "_HOME"))]
    assert len(cache_vars) >= 8
    assert all(env[k].startswith("/tmp") for k in cache_vars), {k: env[k] for k in cache_vars}


def test_the_entrypoint_is_the_backend_cli(cuda_backend_image: str) -> None:
    done = run(cuda_backend_image, "--help")
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout
    version = run(cuda_backend_image, "--version")
    assert version.stdout.split() == ["zarf-vllm-backend", zarf_vllm.__version__]


def test_the_first_start_compilers_work_locked_down(cuda_backend_image: str) -> None:
    done = run(cuda_backend_image, "-c", COMPILE, entrypoint="/bin/sh")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "loaded probe", done.stdout


def test_serve_without_a_gpu_stops_with_one_line_naming_it(cuda_model_image: str) -> None:
    done = run(cuda_model_image)  # the image's own command: serve the demo model
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("error: no GPU found: this is the CUDA build of vLLM"), errors
    assert "NVIDIA container runtime" in errors[0]


def test_the_cuda_model_image_is_the_backend_plus_the_weights(
    cuda_model_image: str, cuda_backend_image: str, cuda_report: dict[str, str]
) -> None:
    model, backend = inspect(cuda_model_image), inspect(cuda_backend_image)
    env = dict(item.split("=", 1) for item in model["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["BACKEND_MODEL__PATH"].startswith("/models/")
    assert model["Entrypoint"] == backend["Entrypoint"]
    assert model["Labels"]["zarf-vllm.cuda.version"] == backend["Labels"]["zarf-vllm.cuda.version"]
    listing = run(cuda_model_image, "-c", f"ls {env['BACKEND_MODEL__PATH']}", entrypoint="/bin/sh")
    assert "config.json" in listing.stdout.split(), listing.stderr


def test_the_driver_check_runs_in_the_image_and_names_the_missing_driver(
    cuda_backend_image: str,
) -> None:
    script = (ROOT / "scripts/check_gpu_driver.py").read_text()
    done = subprocess.run(
        ["docker", "run", "-i", *LOCKED_DOWN, "--entrypoint", "/opt/venv/bin/python",
         cuda_backend_image, "-"],
        input=script, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "NVML: NVML Shared Library Not Found: no NVIDIA driver in the container "
        "(is the NVIDIA runtime set up?)"
    )


def test_check_gpu_node_fails_cleanly_where_there_is_no_nvidia_runtime(
    cuda_model_image: str,
) -> None:
    name_before = _check_containers()
    done = subprocess.run(
        [str(ROOT / "scripts/check-gpu-node"), "--docker", "--image", cuda_model_image],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "check-gpu-node: FAILED: the image did not start" in done.stderr
    assert _check_containers() == name_before  # it removed what it created


def _check_containers() -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", "name=zarf-vllm-gpu-check-", "--format", "{{.Names}}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return sorted(listed.stdout.split())
