"""`backend pull MANIFEST [--dest DIR]`: fetch and verify a model's weights (connected side).

Prints the verified directory on stdout, so scripts can use it: `dir=$(scripts/pull ID)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zarf_vllm.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="download/build a model's files and verify them against its manifest",
        description=(
            "Makes DIR hold exactly the manifest's files, each checked for size and sha256, "
            "config.json checked against the architecture facts. Skips all work when DIR is "
            "already verified. Hugging Face sources honour HF_ENDPOINT and HF_TOKEN."
        ),
    )
    parser.add_argument("manifest", help="manifest file, or a model id in model-manifests/")
    parser.add_argument(
        "--dest",
        type=Path,
        help="target directory (default: ${XDG_CACHE_HOME:-~/.cache}/zarf-vllm/models/<id>)",
    )
    parser.add_argument(
        "--lock",
        action="store_true",
        help="lock an unlocked manifest first (writes revision and files into it)",
    )
    parser.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zarf_vllm.model.errors import WeightsError
    from zarf_vllm.model.manifest import ManifestError, load_manifest
    from zarf_vllm.packaging import project
    from zarf_vllm.packaging.recipes import RecipeError
    from zarf_vllm.packaging.weights.pull import default_dest, pull

    try:
        path = project.find_manifest(args.manifest)
        manifest = load_manifest(path)
        if args.lock and not manifest.locked:
            from zarf_vllm.packaging.weights.lock import lock_manifest_file

            manifest = lock_manifest_file(path)
        dest = args.dest or default_dest(manifest)
        result = pull(manifest, dest, workers=args.workers)
    except (ManifestError, WeightsError, RecipeError) as exc:
        raise CommandError(str(exc)) from exc
    print(result.directory)
    return 0
