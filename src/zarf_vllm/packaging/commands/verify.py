"""`backend verify DIR --manifest MANIFEST [--fast]`: re-check weights against a manifest."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zarf_vllm.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check a weights directory against its manifest (size and sha256)",
        description=(
            "Checks that DIR holds every file the manifest lists with its size and sha256 "
            "(--fast: size only). Exits 1 naming the first file that differs."
        ),
    )
    parser.add_argument("directory", type=Path, help="the model directory")
    parser.add_argument(
        "--manifest", required=True, help="manifest file, or a model id in model-manifests/"
    )
    parser.add_argument("--fast", action="store_true", help="check sizes only, not sha256")
    parser.add_argument("--workers", type=int, default=None, help="hash threads (default: cores)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zarf_vllm.model.errors import WeightsError
    from zarf_vllm.model.manifest import ManifestError, load_manifest
    from zarf_vllm.model.verify import locked_files, verify_directory
    from zarf_vllm.packaging import project

    mode = "size" if args.fast else "full"
    start = time.monotonic()
    try:
        manifest = load_manifest(project.find_manifest(args.manifest))
        verify_directory(args.directory, manifest, mode, workers=args.workers)
    except (ManifestError, WeightsError) as exc:
        raise CommandError(str(exc)) from exc
    files = locked_files(manifest)
    print(
        f"verify: {args.directory} matches {manifest.id} ({len(files)} files, "
        f"{sum(f.size for f in files):,} bytes, {mode}) in {time.monotonic() - start:.1f}s",
        file=sys.stderr,
    )
    return 0
