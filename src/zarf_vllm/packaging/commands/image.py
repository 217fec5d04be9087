"""`backend image MANIFEST --weights DIR --base IMAGE_REF --tag NAME [--oci-archive FILE]`:
build the model image (the backend image plus one reproducible layer per weight file)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zarf_vllm.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "image",
        help="build the model image: backend image + one layer per verified weight file",
        description=(
            "Adds the manifest and one layer per weight file (UID/GID 65532, fixed times: the "
            "same weights give the same layer digests) to the backend image, checks every "
            "file's sha256 on the way, and loads the result into the local Docker engine "
            "(skopeo) and/or writes an OCI archive for Zarf's imageArchives."
        ),
    )
    parser.add_argument("manifest", help="manifest file, or a model id in model-manifests/")
    parser.add_argument(
        "--weights", type=Path, help="verified weights directory (default: pull's default --dest)"
    )
    parser.add_argument("--flavor", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--base",
        help="backend image: NAME:TAG in the Docker engine, any skopeo transport, or "
        "oci:DIR[:REF] (default: zarf.internal/zarf-vllm/backend:<version>-<flavor>)",
    )
    parser.add_argument(
        "--tag", help="image name (default: zarf.internal/zarf-vllm/model-<id>:<version>-<flavor>)"
    )
    parser.add_argument("--oci-archive", type=Path, help="also write the image as an OCI archive")
    parser.add_argument("--oci-dir", type=Path, help="keep the OCI layout directory here")
    parser.add_argument(
        "--no-load", action="store_true", help="do not load the image into the Docker engine"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zarf_vllm.model.errors import WeightsError
    from zarf_vllm.model.manifest import ManifestError, load_manifest
    from zarf_vllm.packaging import project
    from zarf_vllm.packaging.model_image import (
        ImageError,
        backend_tag,
        build_model_image,
        image_tag,
    )
    from zarf_vllm.packaging.weights.pull import default_dest

    start = time.monotonic()
    try:
        path = project.find_manifest(args.manifest)
        manifest = load_manifest(path)
        tag = args.tag or image_tag(manifest, args.flavor)
        image = build_model_image(
            manifest,
            path,
            args.weights or default_dest(manifest),
            args.base or backend_tag(args.flavor),
            tag,
            layout_dir=args.oci_dir,
            oci_archive=args.oci_archive,
            load=not args.no_load,
            log=lambda message: print(f"image: {message}", file=sys.stderr),
        )
    except (ManifestError, WeightsError, ImageError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"image: {tag} id {image.config_digest} ({len(image.weight_layers)} weight layers) "
        f"in {time.monotonic() - start:.1f}s",
        file=sys.stderr,
    )
    print(tag)
    return 0
