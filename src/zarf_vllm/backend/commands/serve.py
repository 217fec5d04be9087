"""`backend serve`: run the gRPC backend (and the OpenAI-compatible API) until SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zarf_vllm.backend.commands.model_settings import checked_model, flag_overrides
from zarf_vllm.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over the LeapfrogAI gRPC contract",
        description=(
            "Serve a model over the LeapfrogAI gRPC contract with vLLM. Every setting can also "
            "come from the environment (BACKEND_<SECTION>__<KEY>, e.g. BACKEND_ENGINE__"
            "MAX_MODEL_LEN=4096) or a YAML file (--config); flags win over both."
        ),
    )
    parser.add_argument("--model", type=Path, help="model directory (model.path)")
    parser.add_argument("--name", help="served model name (model.name)")
    parser.add_argument("--manifest", type=Path, help="model manifest file (model.manifest)")
    parser.add_argument("--host", help="address to listen on (server.host, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="gRPC port (server.port, default 50051)")
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus port (server.metrics_port, default 9090)"
    )
    parser.add_argument(
        "--openai-port",
        type=int,
        help="OpenAI-compatible HTTP API's port (server.openai_port, default 8000)",
    )
    parser.add_argument("--config", type=Path, help="YAML settings file (or BACKEND_CONFIG)")
    parser.set_defaults(func=run)


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        ("model", "path"): args.model,
        ("model", "name"): args.name,
        ("model", "manifest"): args.manifest,
        ("server", "host"): args.host,
        ("server", "port"): args.port,
        ("server", "metrics_port"): args.metrics_port,
        ("server", "openai_port"): args.openai_port,
    }
    return flag_overrides(flags)


def run(args: argparse.Namespace) -> int:
    # Before anything imports vLLM or Hugging Face libraries: they read these at import time.
    from zarf_vllm.backend.offline import force_offline

    force_offline()

    import asyncio

    from zarf_vllm.backend.adapters import served_adapters
    from zarf_vllm.backend.config import ConfigError, load_settings
    from zarf_vllm.backend.logs import configure_engine_logging, configure_logging
    from zarf_vllm.backend.tls import load_tls

    try:
        settings = load_settings(args.config, _flag_overrides(args))
        # Before the model: a certificate mistake should not wait for minutes of loading.
        load_tls(settings.tls)
        manifest = checked_model(settings)
        served_adapters(settings, manifest)  # refuses adapters it could not serve, before loading
    except ConfigError as exc:
        raise CommandError(str(exc), exit_code=2) from exc
    configure_logging(settings.server.log_level)
    configure_engine_logging(settings.server.log_level)

    from zarf_vllm.backend.fit_check import check_this_machine

    try:
        # The chart's sizing, once more, against the machine itself: before anything serves.
        check_this_machine(settings.engine, manifest, settings.server.api_processes)
    except ConfigError as exc:
        raise CommandError(str(exc), exit_code=2) from exc

    if settings.server.api_processes > 1:
        from zarf_vllm.backend.frontends import run_front_ends

        return run_front_ends(settings, manifest)

    from zarf_vllm.backend.server import run as run_server

    return asyncio.run(run_server(settings, manifest))
