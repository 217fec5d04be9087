"""`backend preview`: print what `zarf package deploy --set ...` would apply."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zarf_vllm.cli import CommandError


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="print what `zarf package deploy` would apply (Zarf variables, Helm rendering)",
        description=(
            "Print every object `zarf package deploy --set NAME=VALUE ...` would apply for one "
            "model's package: Zarf's variable defaults, --set (names upper-cased) and pattern "
            "checks, ###ZARF_VAR_...### substitution in the values files and the rendered "
            "manifests, and the chart rendered by Helm. A refusal exits 1 with its reason and "
            "prints nothing else."
        ),
    )
    parser.add_argument(
        "--set",
        dest="sets",
        type=_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a deploy variable, as zarf package deploy",
    )
    parser.add_argument("--manifest", help="manifest file or id (default: the demo model)")
    parser.add_argument(
        "--values",
        type=Path,
        help="values rendered by scripts/render-values (default: render them)",
    )
    parser.add_argument(
        "--flavor",
        choices=("cpu", "cuda"),
        help="the package's flavor (default: the one PROFILE needs)",
    )
    parser.add_argument("--name", help="the package NAME template (default: vllm-<id>)")
    parser.add_argument(
        "--api-versions",
        dest="api_versions",
        action="append",
        default=[],
        metavar="GROUP/VERSION[/KIND]",
        help=(
            "an API the target cluster serves, as `helm template --api-versions` (repeatable): "
            "what the `auto` variables look for, such as keda.sh/v1alpha1/ScaledObject or "
            "monitoring.coreos.com/v1/PrometheusRule"
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zarf_vllm.model.manifest import ManifestError
    from zarf_vllm.packaging import project
    from zarf_vllm.packaging.preview import PreviewError, preview
    from zarf_vllm.packaging.profiles import ProfileError, load_manifest_or_error

    try:
        path = project.find_manifest(args.manifest) if args.manifest else project.demo_manifest()
        result = preview(
            load_manifest_or_error(path),
            dict(args.sets),
            flavor=args.flavor,
            rendered_values=args.values.read_text() if args.values else None,
            name=args.name,
            api_versions=args.api_versions,
        )
    except (PreviewError, ProfileError, ManifestError) as exc:
        raise CommandError(str(exc)) from exc
    for name in result.unknown_sets:
        print(
            f"preview: warning: the package declares no variable {name}; Zarf ignores it",
            file=sys.stderr,
        )
    sys.stdout.write(result.text())
    return 0
