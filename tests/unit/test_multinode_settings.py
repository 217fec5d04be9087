"""Settings of a model served across nodes: the leader's and workers' engine settings, mapped
onto vLLM's multi-node arguments, and the `worker` command's refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zarf_vllm.backend.config import ConfigError, load_settings
from zarf_vllm.backend.engine import engine_args


def settings(**engine: object):
    return load_settings(None, {"model": {"path": "/m"}, "engine": engine})


def test_one_node_passes_only_the_pipeline_size() -> None:
    args = engine_args(
        settings(pipeline_parallel_size=2), is_embedding=False, dtype="auto", on_cpu=False
    )
    assert args["pipeline_parallel_size"] == 2
    assert not {"nnodes", "node_rank", "master_addr", "distributed_executor_backend"} & set(args)


def test_several_nodes_run_vllms_mp_executor_with_the_leaders_address() -> None:
    engine = dict(pipeline_parallel_size=2, nnodes=2, node_rank=1, master_addr="leader")
    args = engine_args(settings(**engine), is_embedding=False, dtype="auto", on_cpu=False)
    assert args["distributed_executor_backend"] == "mp"
    assert (args["nnodes"], args["node_rank"], args["master_addr"]) == (2, 1, "leader")
    assert args["master_port"] == 29501  # vLLM's own default


def test_a_node_rank_outside_the_group_is_named() -> None:
    with pytest.raises(ConfigError, match="node_rank 2 is not below nnodes 2"):
        settings(nnodes=2, node_rank=2)


def worker(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "zarf_vllm.backend", "worker", *args]
    env = {**os.environ, "BACKEND_ENGINE__NNODES": "2"}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_the_worker_command_refuses_the_leaders_rank(tmp_path: Path) -> None:
    result = worker("--model", str(tmp_path), "--node-rank", "0")
    assert result.returncode == 2
    assert "`worker` runs nodes 1 to nnodes - 1; node 0, the leader, runs `serve`" in result.stderr


def test_the_worker_command_checks_the_model_directory_like_serve(tmp_path: Path) -> None:
    result = worker("--model", str(tmp_path / "absent"), "--node-rank", "1")
    assert result.returncode == 2
    assert "absent does not exist" in result.stderr
