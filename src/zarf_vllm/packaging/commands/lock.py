"""`backend lock MANIFEST [--revision REV]`: pin a manifest's revision and files (connected)."""

from __future__ import annotations

import argparse
import sys

from zarf_vllm.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lock",
        help="record a manifest's exact revision and files (size, sha256) from its source",
        description=(
            "Resolves the source to an exact revision and writes every needed file's path, "
            "size and sha256 into the manifest file (comments kept), and the same for each "
            "LoRA adapter not locked yet, with its rank from adapter_config.json. Checks "
            "config.json against the architecture facts. Hugging Face sources honour "
            "HF_ENDPOINT and HF_TOKEN; no weights are downloaded for them."
        ),
    )
    parser.add_argument("manifest", help="manifest file, or a model id in model-manifests/")
    parser.add_argument(
        "--revision",
        help="branch, tag or commit of the model to lock (Hugging Face; default: the "
        "manifest's, else main); adapters are locked at their own revision, else main",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the locked files, leave the file as it is"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zarf_vllm.model.errors import WeightsError
    from zarf_vllm.model.manifest import ManifestError, load_manifest
    from zarf_vllm.packaging import project
    from zarf_vllm.packaging.recipes import RecipeError
    from zarf_vllm.packaging.weights.lock import lock_manifest, lock_manifest_file, render_files

    try:
        path = project.find_manifest(args.manifest)
        if args.dry_run:
            locked = lock_manifest(load_manifest(path), args.revision)
        else:
            locked = lock_manifest_file(path, args.revision)
    except (ManifestError, WeightsError, RecipeError) as exc:
        raise CommandError(str(exc)) from exc
    except Exception as exc:  # huggingface_hub's HTTP errors: repository, revision, auth
        if type(exc).__module__.startswith("huggingface_hub"):
            raise CommandError(f"{path}: {exc}") from exc
        raise
    files = locked.files or []
    print(render_files(files), end="")
    revision = getattr(locked.source, "revision", None)
    print(
        f"lock: {locked.id}: {len(files)} files, {sum(f.size for f in files):,} bytes"
        + (f", revision {revision}" if revision else "")
        + ("" if args.dry_run else f"; written to {path}"),
        file=sys.stderr,
    )
    for adapter in locked.adapters:
        adapter_files = adapter.files or []
        adapter_revision = getattr(adapter.source, "revision", None)
        print(
            f"lock: adapter {adapter.name}: {len(adapter_files)} files, "
            f"{sum(f.size for f in adapter_files):,} bytes, rank {adapter.rank}"
            + (f", revision {adapter_revision}" if adapter_revision else ""),
            file=sys.stderr,
        )
    return 0
