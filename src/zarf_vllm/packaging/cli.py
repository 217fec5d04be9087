"""`zarf-vllm-package` (`python -m zarf_vllm.packaging`): the steps `zarf package create` runs."""

from __future__ import annotations

from collections.abc import Sequence

from zarf_vllm.cli import build_parser, run

PROG = "zarf-vllm-package"
# The order is the order `--help` lists them in.
COMMAND_MODULES = tuple(
    f"zarf_vllm.packaging.commands.{name}"
    for name in ("pull", "verify", "lock", "image", "values", "preview")
)


def main(argv: Sequence[str] | None = None) -> int:
    description = "Connected-side packaging: pull, verify and lock weights, render values, images."
    return run(build_parser(PROG, description, COMMAND_MODULES), argv)
