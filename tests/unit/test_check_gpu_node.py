"""scripts/check-gpu-node without a GPU: its syntax, its argument handling, and what it would run
(--dry-run). Running it for real needs a GPU node; tests/containers/test_cuda_image.py checks
that it fails cleanly on a machine without the NVIDIA runtime."""

from __future__ import annotations

import runpy
import subprocess
import sys
import types

import pytest

import zarf_vllm
from support.paths import SCRIPTS

SCRIPT = SCRIPTS / "check-gpu-node"
DEMO_CUDA_IMAGE = (
    f"zarf.internal/zarf-vllm/model-smollm2-135m-instruct:{zarf_vllm.__version__}-cuda"
)


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_help_describes_both_ways_of_reaching_a_gpu() -> None:
    done = check("--help")
    assert done.returncode == 0
    assert "--docker" in done.stdout and "--kubectl" in done.stdout
    assert "Exit status" in done.stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ([], "say where the GPU is: --docker or --kubectl"),
        (["--docker", "--kubectl"], "--docker and --kubectl exclude each other"),
        (["--docker", "--node", "gpu-1"], "--namespace and --node are for --kubectl"),
        (["--kubectl", "--gpus", "device=0"], "--gpus is for --docker (a Pod gets one GPU)"),
        (
            ["--docker", "--timeout", "soon"],
            "--timeout must be a whole number of seconds, not 'soon'",
        ),
        (["--docker", "--image"], "--image needs a value"),
        (["--docker", "--image", "--keep"], "--image needs a value"),
        (["--docker", "--bogus"], "unknown argument '--bogus'"),
    ],
)
def test_bad_arguments_exit_2_with_what_is_wrong(args: list[str], complaint: str) -> None:
    done = check(*args)
    assert done.returncode == 2, done.stderr
    assert f"check-gpu-node: error: {complaint}; see --help" in done.stderr
    assert done.stdout == ""


def test_docker_runs_the_demo_cuda_image_locked_down_on_the_gpus() -> None:
    done = check("--docker", "--dry-run")
    assert done.returncode == 0, done.stderr
    start, driver, chat = done.stdout.splitlines()
    assert start.startswith("docker run -d --name zarf-vllm-gpu-check-")
    for setting in ("--gpus all", "--user 65532:65532", "--read-only", "--cap-drop ALL"):
        assert setting in start
    assert start.endswith(DEMO_CUDA_IMAGE + " ")
    assert driver.startswith("docker exec -i ") and driver.endswith("< scripts/check_gpu_driver.py")
    assert "zarf_vllm.backend chat What\\ is\\ the\\ capital\\ of\\ France" in chat
    assert "--wait 900" in chat


def test_kubectl_asks_for_one_gpu_in_the_namespace_and_node_given() -> None:
    done = check(
        "--kubectl", "--namespace", "ai", "--node", "gpu-1", "--image", "reg/x:1", "--timeout",
        "60", "--dry-run",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("kubectl --namespace ai apply -f - <<EOF\n")
    assert "limits: {nvidia.com/gpu: 1}" in out
    assert "nodeName: gpu-1" in out and "image: reg/x:1" in out
    assert "readOnlyRootFilesystem: true" in out and "runAsUser: 65532" in out
    assert "kubectl --namespace ai exec -i zarf-vllm-gpu-check-" in out and "--wait 60" in out


def fake_nvml(driver: str, cuda: int, gpus: list[tuple[str, int]]) -> types.ModuleType:
    """The few NVML calls the driver check makes, answering like a node with this driver."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = type("NVMLError", (Exception,), {})
    nvml.nvmlInit = nvml.nvmlShutdown = lambda: None
    nvml.nvmlSystemGetDriverVersion = lambda: driver
    nvml.nvmlSystemGetCudaDriverVersion_v2 = lambda: cuda
    nvml.nvmlDeviceGetCount = lambda: len(gpus)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    nvml.nvmlDeviceGetName = lambda h: h[0]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=h[1] * 2**20)
    return nvml


@pytest.mark.parametrize(
    ("driver", "cuda", "gpus", "refusal"),
    [
        ("580.95.05", 13000, [("NVIDIA H100 80GB HBM3", 81559)], None),
        ("590.44.01", 13010, [("NVIDIA L4", 23034), ("NVIDIA L4", 23034)], None),
        ("575.57.08", 12090, [("NVIDIA L4", 23034)], "the driver 575.57.08 is older"),
        ("580.95.05", 13000, [], "NVML sees no GPU in the container"),
    ],
)
def test_the_driver_check_compares_the_nodes_driver_with_the_images_minimum(
    driver: str,
    cuda: int,
    gpus: list[tuple[str, int]],
    refusal: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(driver, cuda, gpus))
    # What the cuda image's environment carries (checked in tests/containers/test_cuda_image.py).
    monkeypatch.setenv("ZARF_VLLM_CUDA_VERSION", "13.0")
    monkeypatch.setenv("ZARF_VLLM_CUDA_MIN_DRIVER", "580")
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(SCRIPTS / "check_gpu_driver.py"), run_name="__main__")
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"driver {driver} (CUDA {cuda // 1000}.{cuda % 1000 // 10}); ")
    assert "the image needs CUDA 13.0, driver >= 580" in line
    if refusal is None:
        assert exited.value.code == 0
        assert gpus[0][0] in line
    else:
        assert refusal in str(exited.value.code)
