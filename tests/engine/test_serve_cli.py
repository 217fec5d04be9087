"""`backend serve` refuses bad settings and bad weights with one clear line, before loading."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.paths import DEMO_MANIFEST


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zarf_vllm.backend", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_missing_model_directory_is_named(tmp_path: Path) -> None:
    result = serve("--model", str(tmp_path / "absent"))
    assert result.returncode == 2
    assert "absent does not exist" in error_line(result)


def test_a_directory_without_config_json_is_refused(tmp_path: Path) -> None:
    result = serve("--model", str(tmp_path))
    assert result.returncode == 2
    assert "has no config.json" in error_line(result)


def test_no_model_at_all_says_how_to_give_one() -> None:
    result = serve()
    assert result.returncode == 2
    assert "--model DIR or set BACKEND_MODEL__PATH" in error_line(result)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"BACKEND_SERVER__PORT": "fifty"}, "server.port"),
        ({"BACKEND_ENGINE__GPU_MEMORY_UTILIZATION": "1.5"}, "engine.gpu_memory_utilization"),
        ({"BACKEND_ENGINE__MAX_MODEL_LENGTH": "10"}, "engine.max_model_length: unknown setting"),
        ({"BACKEND_MODLE__PATH": "/x"}, "BACKEND_MODLE__PATH is not a setting"),
        ({"BACKEND_MODEL__VERIFY": "sometimes"}, "model.verify"),
    ],
)
def test_bad_environment_settings_are_named(
    tiny_model_dir: Path, env: dict[str, str], expected: str
) -> None:
    result = serve("--model", str(tiny_model_dir), env=env)
    assert result.returncode == 2
    assert expected in error_line(result)


def test_unknown_keys_in_the_config_file_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"engine": {"tensor_paralel_size": 2}}))
    result = serve("--model", str(tiny_model_dir), "--config", str(config))
    assert result.returncode == 2
    assert "engine.tensor_paralel_size: unknown setting" in error_line(result)


def _tiny_manifest(model_dir: Path, destination: Path) -> Path:
    files = [
        {
            "path": p.name,
            "size": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(model_dir.iterdir())
        if p.is_file()
    ]
    manifest = {
        "id": "tiny-llama",
        "display_name": "Tiny random Llama",
        "license": "Apache-2.0",
        "source": {"kind": "local", "path": str(model_dir)},
        "files": files,
        "architecture": {
            "model_type": "llama",
            "parameters": 200_000,
            "layers": 2,
            "hidden_size": 128,
            "intermediate_size": 256,
            "attention_heads": 2,
            "kv_heads": 1,
            "head_dim": 64,
            "vocab_size": 414,
            "max_position_embeddings": 1024,
            "weight_dtype": "float32",
            "tied_embeddings": True,
        },
    }
    path = destination / "tiny-llama.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_corrupted_weights_are_refused_naming_the_file(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    manifest = _tiny_manifest(model, tmp_path)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the full check sees it
    weights.write_bytes(bytes(data))
    args = ("--model", str(model), "--manifest", str(manifest))

    full = serve(*args, env={"BACKEND_MODEL__VERIFY": "full"})
    assert full.returncode == 2
    line = error_line(full)
    assert "refusing to serve" in line and "model.safetensors: sha256 mismatch" in line

    weights.write_bytes(bytes(data[:-10]))
    size = serve(*args, env={"BACKEND_MODEL__VERIFY": "size"})
    assert size.returncode == 2
    assert "model.safetensors: size mismatch" in error_line(size)


def test_verify_needs_a_manifest(tiny_model_dir: Path) -> None:
    result = serve("--model", str(tiny_model_dir), env={"BACKEND_MODEL__VERIFY": "full"})
    assert result.returncode == 2
    assert "needs the model's manifest" in error_line(result)


def test_settings_that_cannot_fit_this_machine_are_refused_in_numbers_before_loading(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # The demo's manifest (the check needs its facts) and a context longer than it accepts.
    manifest = DEMO_MANIFEST
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"engine": {"cpu_kvcache_space_gib": 1}}))
    result = serve("--model", str(tiny_model_dir), "--manifest", str(manifest), "--config",
                   str(config), env={"BACKEND_ENGINE__MAX_MODEL_LEN": "100000"})  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the engine settings do not fit this machine (CPU"), last
    assert "MAX_MODEL_LEN=100000 exceeds the 8192 tokens smollm2-135m-instruct accepts" in last
