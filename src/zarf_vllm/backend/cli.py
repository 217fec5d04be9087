"""`zarf-vllm-backend` (`python -m zarf_vllm.backend`): the in-pod server and its chat client."""

from __future__ import annotations

from collections.abc import Sequence

from zarf_vllm.cli import build_parser, run

PROG = "zarf-vllm-backend"
# The order is the order `--help` lists them in.
COMMAND_MODULES = (
    "zarf_vllm.backend.commands.serve",
    "zarf_vllm.backend.commands.worker",
    "zarf_vllm.backend.commands.chat",
)


def main(argv: Sequence[str] | None = None) -> int:
    description = "The LeapfrogAI gRPC backend on vLLM (the in-pod runtime)."
    return run(build_parser(PROG, description, COMMAND_MODULES), argv)
