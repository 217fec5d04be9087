"""`backend values`: render the chart values of every deployment profile for one model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zarf_vllm.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "values",
        help="render the chart values of every profile for one model (zarf package create)",
        description=(
            "Render the chart values of every deployment profile (chart/profiles/) for one "
            "model manifest: what `zarf package create` puts in the package, and PROFILE picks "
            "from at deploy. Prints which profiles fit on stderr. With --table, prints the fit "
            "of every manifest in model-manifests/ on every profile instead."
        ),
    )
    parser.add_argument("manifest", nargs="?", help="manifest file, or an id in model-manifests/")
    parser.add_argument("--out", type=Path, help="write the values here (default: stdout)")
    parser.add_argument(
        "--flavor",
        choices=("cpu", "cuda"),
        default="cpu",
        help="the package's image flavor (default: cpu)",
    )
    parser.add_argument("--version", help="the images' version (default: this backend's)")
    parser.add_argument(
        "--table",
        action="store_true",
        help="print the manifest x profile fit table (Markdown) and exit",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zarf_vllm import __version__
    from zarf_vllm.model.manifest import ManifestError
    from zarf_vllm.model.sizing import ModelFacts
    from zarf_vllm.packaging import project
    from zarf_vllm.packaging.profiles import (
        ProfileError,
        fit_table,
        load_catalog,
        load_manifest_or_error,
        load_profiles,
        outcomes,
        render_values,
    )

    try:
        profiles = load_profiles()
        catalog = load_catalog()
        if args.table:
            sys.stdout.write(fit_table(catalog, profiles))
            return 0
        if not args.manifest:
            raise CommandError("name a manifest (a file, or an id in model-manifests/)", 2)
        manifest = load_manifest_or_error(project.find_manifest(args.manifest))
        text = render_values(
            manifest,
            flavor=args.flavor,
            version=args.version or __version__,
            profiles=profiles,
            catalog=catalog,
            source=args.manifest,
        )
    except (ProfileError, ManifestError) as exc:
        raise CommandError(str(exc)) from exc
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    for outcome in outcomes(ModelFacts.from_manifest(manifest), profiles):
        state = f"fits: {outcome.fit.summary}" if outcome.fit else f"refused: {outcome.reason}"
        print(f"values: {manifest.id}: {state}", file=sys.stderr)
    return 0
