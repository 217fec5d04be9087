"""Shared, cached inputs of the profile, chart, preview and zarf tests.

Rendering is cheap (Helm runs in-process), but every manifest x profile pair is used by several
tests; each pair is rendered once per test session here.
"""

from __future__ import annotations

import functools
import json

import yaml

from support.paths import CHART, MANIFESTS, ZARF_SCHEMA, shared_file
from zarf_vllm.model.manifest import Adapter, LocalSource, ModelManifest
from zarf_vllm.model.sizing import Fit, Overrides, Refused
from zarf_vllm.packaging.preview import Preview, PreviewError, preview
from zarf_vllm.packaging.profiles import (
    Profile,
    load_catalog,
    load_profiles,
    render_values,
)

CATALOG: list[ModelManifest] = load_catalog(MANIFESTS)
PROFILES: list[Profile] = load_profiles(CHART)
MANIFEST_IDS = [m.id for m in CATALOG]
PROFILE_NAMES = [p.name for p in PROFILES]
# `custom` is sized at deploy from GPU_COUNT and GPU_MEMORY_GIB; the pairs give it these.
CUSTOM_SETS = {"GPU_COUNT": "2", "GPU_MEMORY_GIB": "48"}
CUSTOM_OVERRIDES = Overrides(gpu_count=2, gpu_memory_gib=48)


def with_adapters(base: ModelManifest, ranks: tuple[int, ...]) -> ModelManifest:
    """`base` with LoRA adapters of these ranks (no files: nothing is pulled), as `<id>-lora`."""
    adapters = [
        Adapter(name=f"adapter-{i}", source=LocalSource(kind="local", path="x"), files=[], rank=r)
        for i, r in enumerate(ranks)
    ]
    data = {**base.model_dump(), "id": f"{base.id}-lora", "adapters": adapters}
    return ModelManifest.model_validate(data)


# No shipped manifest lists adapters; these do, so that the chart's LoRA terms are compared with
# Python's: a Llama (LoRA on its embeddings too) whose slots (8 at rank 256, 11 GiB per GPU at
# TP 1) crowd out the KV cache or do not fit, a Qwen2 (no embedding slots) and the demo model,
# whose CPU profile counts them in host memory.
LORA_CATALOG: list[ModelManifest] = [
    with_adapters(next(m for m in CATALOG if m.id == base), ranks)
    for base, ranks in (
        ("llama-3.1-8b-instruct", (16, 256, 8, 8, 8, 8, 8, 8)),
        ("qwen2.5-0.5b-instruct", (64, 8)),
        ("smollm2-135m-instruct", (512, 16, 16)),
    )
]
LORA_MANIFEST_IDS = [m.id for m in LORA_CATALOG]


def manifest(manifest_id: str) -> ModelManifest:
    return next(m for m in [*CATALOG, *LORA_CATALOG] if m.id == manifest_id)


def profile(name: str) -> Profile:
    return next(p for p in PROFILES if p.name == name)


def flavor_of(profile_name: str) -> str:
    return "cpu" if profile_name == "cpu" else "cuda"


@functools.cache
def values_text(manifest_id: str, flavor: str) -> str:
    return render_values(manifest(manifest_id), flavor=flavor, profiles=PROFILES, catalog=CATALOG)


@functools.cache
def values(manifest_id: str, flavor: str) -> dict:
    return yaml.safe_load(values_text(manifest_id, flavor))


@functools.cache
def _preview(
    manifest_id: str, sets: tuple[tuple[str, str], ...], apis: tuple[str, ...] = ()
) -> Preview | PreviewError:
    """What preview gives for these --set values (on a cluster that serves `apis` besides
    Kubernetes' own): the objects, or the refusal."""
    sets_dict = dict(sets)
    flavor = flavor_of(sets_dict.get("PROFILE", "cpu"))
    try:
        return preview(
            manifest(manifest_id),
            sets_dict,
            rendered_values=values_text(manifest_id, flavor),
            api_versions=apis,
        )
    except PreviewError as exc:
        return exc


# What a cluster serves for profiles that span nodes (the chart refuses them without it).
LWS_API = "leaderworkerset.x-k8s.io/v1/LeaderWorkerSet"


def run_preview(manifest_id: str, **sets: str) -> Preview | PreviewError:
    """A multi-node profile's pairs render on a cluster that serves LeaderWorkerSet, as such a
    profile requires (tests/chart/test_multinode_chart.py checks the refusal without it)."""
    name = sets.get("PROFILE", "cpu")
    known = name in PROFILE_NAMES
    apis = (LWS_API,) if known and profile(name).nodes > 1 else ()
    return _preview(manifest_id, tuple(sorted(sets.items())), apis)


def run_preview_on(apis: tuple[str, ...], manifest_id: str, **sets: str) -> Preview | PreviewError:
    """run_preview on a cluster serving `apis` (what the chart's `auto` objects look for)."""
    return _preview(manifest_id, tuple(sorted(sets.items())), apis)


def pair_sets(profile_name: str) -> dict[str, str]:
    sets = {"PROFILE": profile_name}
    if profile_name == "custom":
        sets.update(CUSTOM_SETS)
    return sets


def python_fit(
    manifest_id: str, profile_name: str, overrides: Overrides | None = None
) -> Fit | Refused:
    """What the sizing says of the pair (with the refusal's alternatives, as the chart)."""
    from zarf_vllm.packaging.profiles import size_or_refuse

    if overrides is None:
        overrides = CUSTOM_OVERRIDES if profile_name == "custom" else Overrides()
    try:
        return size_or_refuse(
            manifest(manifest_id),
            profile(profile_name),
            PROFILES,
            CATALOG,
            overrides,
            flavor_of(profile_name),
        )
    except Refused as exc:
        return exc


def objects(result: Preview) -> dict[str, dict]:
    """Rendered objects by kind (each kind appears once in this chart)."""
    found: dict[str, dict] = {}
    for item in result.objects:
        obj = item.object
        found[obj["kind"] if obj["kind"] != "ConfigMap" else obj["metadata"]["name"]] = obj
    return found


def config_of(result: Preview) -> dict:
    for item in result.objects:
        obj = item.object
        if obj["kind"] == "ConfigMap" and "config.yaml" in obj["data"]:
            return yaml.safe_load(obj["data"]["config.yaml"])
    raise AssertionError("no backend config in the rendered objects")


def deployment_of(result: Preview) -> dict:
    return next(i.object for i in result.objects if i.object["kind"] == "Deployment")


def serving_pod_of(result: Preview) -> dict:
    """The pod template that serves the API: the Deployment's, or a LeaderWorkerSet's leader."""
    for item in result.objects:
        obj = item.object
        if obj["kind"] == "Deployment":
            return obj["spec"]["template"]
        if obj["kind"] == "LeaderWorkerSet":
            return obj["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    raise AssertionError("neither a Deployment nor a LeaderWorkerSet was rendered")


def zarf_schema() -> dict:
    return json.loads(shared_file(ZARF_SCHEMA).read_text())
