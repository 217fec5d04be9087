"""Where the tests find the checkout's parts, and the read-only `../shared` beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "chart"
MANIFESTS = REPO / "model-manifests"
SCRIPTS = REPO / "scripts"
# The two shipped models the suite builds offline: the demo chat model and the embedding model.
DEMO_MANIFEST = MANIFESTS / "smollm2-135m-instruct.yaml"
EMBEDDING_MANIFEST = MANIFESTS / "all-minilm-l6-v2.yaml"
# The wire contract and Zarf's schema live outside the repository, beside a developer's
# checkout; a user's clone has none, and the tests that read them skip.
SHARED = REPO.parent / "shared"
ZARF_SCHEMA = SHARED / "schemas" / "zarf.schema.json"
GRPC_SPEC = SHARED / "spec" / "leapfrogai-grpc.md"


def shared_file(path: Path) -> Path:
    """`path` under ../shared, or a skip that says why (a user's clone has no ../shared)."""
    if not path.is_file():
        pytest.skip(
            f"{path.relative_to(SHARED.parent)} is absent: it comes with the project's "
            "shared/ folder beside the checkout, which a plain clone lacks"
        )
    return path
