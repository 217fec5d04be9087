"""`python -m backend <command>`: one entry point for the server and the packaging steps.

Each command lives in its own module under `backend.commands` and exposes
`add_parser(subparsers)`, which registers the command with `func=run`. Command modules must
not import vLLM or torch at import time, so `--help` and the packaging steps stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

# The order is the order `--help` lists them in.
COMMAND_MODULES = (
    "backend.commands.serve",
    "backend.commands.chat",
    "backend.commands.pull",
    "backend.commands.verify",
    "backend.commands.lock",
    "backend.commands.image",
    "backend.commands.values",
    "backend.commands.preview",
)


class CommandError(Exception):
    """An expected failure: printed as one line `error: ...`, exit code 1 (or `exit_code`)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backend", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
