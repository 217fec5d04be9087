"""The CPU backend image itself: what it holds, how it is configured, that it runs locked down."""

from __future__ import annotations

import json
import subprocess

import zarf_vllm
from zarf_vllm.backend.offline import OFFLINE_ENVIRONMENT

LOCKED_DOWN = [
    "--rm", "--read-only", "--tmpfs", "/tmp", "--network", "none", "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges", "--user", "65532:65532",
]  # fmt: skip

CONTENTS = """
import importlib.util, json, os, time
start = time.monotonic()
import vllm, torch
print(json.dumps({
    "vllm": vllm.__version__,
    "torch": torch.__version__,
    "import_s": round(time.monotonic() - start, 1),
    "absent": [m for m in ("torchvision", "torchaudio", "torchcodec", "triton")
               if importlib.util.find_spec(m) is None],
    "build_leftovers": [p for p in ("/wheels", "/dist", "/root/.cache/pip") if os.path.exists(p)],
    "uid": os.getuid(),
}))
"""


def run(image: str, *args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess:
    argv = ["docker", "run", *LOCKED_DOWN]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    return subprocess.run(
        [*argv, image, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_it_runs_vllm_locked_down_and_holds_nothing_of_the_build(backend_image: str) -> None:
    done = run(backend_image, "-c", CONTENTS, entrypoint="/opt/venv/bin/python")
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["vllm"] == "0.32.0"
    assert facts["torch"].endswith("+cpu")
    # CUDA-linked companions and triton's GPU build are left out of the CPU flavor.
    assert facts["absent"] == ["torchvision", "torchaudio", "torchcodec", "triton"]
    assert facts["build_leftovers"] == []
    assert facts["uid"] == 65532


def test_the_entrypoint_is_the_backend_cli(backend_image: str) -> None:
    done = run(backend_image, "--help")
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout
    version = run(backend_image, "--version")
    assert version.stdout.split() == ["zarf-vllm-backend", zarf_vllm.__version__]


def test_config_labels_and_environment(backend_image: str) -> None:
    inspect = subprocess.run(
        ["docker", "image", "inspect", backend_image], capture_output=True, text=True, check=True
    )
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == [
        "/usr/bin/tini", "--", "/opt/venv/bin/python", "-m", "zarf_vllm.backend"
    ]
    assert config["Cmd"] == ["serve"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == zarf_vllm.__version__
    # The commit it was built from (`-dirty` with uncommitted changes): one of this repository's.
    revision = labels["org.opencontainers.image.revision"].removesuffix("-dirty")
    assert len(revision) == 40
    known = subprocess.run(["git", "cat-file", "-e", f"{revision}^{{commit}}"], check=False)
    assert known.returncode == 0
    assert labels["org.opencontainers.image.source"]
    env = dict(item.split("=", 1) for item in config["Env"])
    # The offline variables have one source, the server's own (zarf_vllm.backend.offline);
    # the no-route-out container test shows the served process needs nothing else.
    assert not set(OFFLINE_ENVIRONMENT) & set(env)
    assert env["HOME"] == "/tmp"
    cache_vars = [k for k in env if k.endswith(("_CACHE", "_CACHE_DIR", "_CACHE_ROOT", "_HOME"))]
    assert len(cache_vars) >= 8
    assert all(env[k].startswith("/tmp") for k in cache_vars), {k: env[k] for k in cache_vars}
