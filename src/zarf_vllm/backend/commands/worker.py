"""`backend worker`: a non-leader node of a model that spans several nodes.

The leader (node 0) runs `serve`: the gRPC API and vLLM's engine, whose pipeline stages (and
their tensor-parallel ranks) are spread over the nodes. Each other node runs this command: its
ranks join the leader's torch.distributed group at engine.master_addr:engine.master_port and
take their work from the leader's engine. It reads the same settings as `serve` (the engine's
settings must be equal on every node), with its own engine.node_rank.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zarf_vllm.backend.commands.model_settings import checked_model, flag_overrides
from zarf_vllm.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run a non-leader node of a model served across several nodes",
        description=(
            "Run node NODE_RANK (1 or more) of an engine that spans engine.nnodes nodes; node 0 "
            "runs `serve`. Settings come from the environment (BACKEND_<SECTION>__<KEY>) or a "
            "YAML file (--config), as for `serve`; flags win over both."
        ),
    )
    parser.add_argument("--model", type=Path, help="model directory (model.path)")
    parser.add_argument("--manifest", type=Path, help="model manifest file (model.manifest)")
    parser.add_argument("--node-rank", type=int, help="this node, 1 or more (engine.node_rank)")
    parser.add_argument("--master-addr", help="the leader's address (engine.master_addr)")
    parser.add_argument(
        "--master-port", type=int, help="the leader's torch.distributed port (engine.master_port)"
    )
    parser.add_argument("--config", type=Path, help="YAML settings file (or BACKEND_CONFIG)")
    parser.set_defaults(func=run)


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        ("model", "path"): args.model,
        ("model", "manifest"): args.manifest,
        ("engine", "node_rank"): args.node_rank,
        ("engine", "master_addr"): args.master_addr,
        ("engine", "master_port"): args.master_port,
    }
    return flag_overrides(flags)


def run(args: argparse.Namespace) -> int:
    # Before anything imports vLLM or Hugging Face libraries: they read these at import time.
    from zarf_vllm.backend.offline import force_offline

    force_offline()

    from zarf_vllm.backend.config import ConfigError, load_settings
    from zarf_vllm.backend.logs import configure_engine_logging, configure_logging
    from zarf_vllm.backend.runtime import is_embedding_model

    try:
        settings = load_settings(args.config, _flag_overrides(args))
        if settings.engine.node_rank < 1:
            raise ConfigError(
                f"engine.node_rank is {settings.engine.node_rank}: `worker` runs nodes 1 to "
                "nnodes - 1; node 0, the leader, runs `serve` (pass --node-rank or set "
                "BACKEND_ENGINE__NODE_RANK)"
            )
        manifest = checked_model(settings)
    except ConfigError as exc:
        raise CommandError(str(exc), exit_code=2) from exc
    configure_logging(settings.server.log_level)
    configure_engine_logging(settings.server.log_level)

    from zarf_vllm.backend.engine import EngineDeadError, run_worker

    try:
        run_worker(settings, is_embedding_model(settings, manifest))
    except EngineDeadError as exc:
        raise CommandError(str(exc)) from exc
    return 0
