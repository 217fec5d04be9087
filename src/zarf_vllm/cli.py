"""The frame both programs' command lines share: subcommands in their own modules.

Each command module exposes `add_parser(subparsers)`, which registers the command with
`func=run`. Command modules must not import vLLM or torch at import time, so `--help` and the
packaging steps stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from zarf_vllm import __version__


class CommandError(Exception):
    """An expected failure: printed as one line `error: ...`, exit code 1 (or `exit_code`)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_parser(prog: str, description: str, modules: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
