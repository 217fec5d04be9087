"""Deployment profiles: one YAML file per hardware class in `chart/profiles/`, and the chart
values rendered from them for one model at `zarf package create`.

A profile names the hardware (GPU count and memory, host CPU and memory), the engine defaults
of its class, and where the pod may run (node selector, tolerations, runtime class). The
values file rendered here (`chart/zarf/values.yaml.j2`) holds every profile with the model's
facts and the sizing constants, so the chart can pick one with PROFILE at deploy and apply the
override variables with the same arithmetic as `zarf_vllm.model.sizing`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import jinja2
import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zarf_vllm import __version__
from zarf_vllm.model import sizing
from zarf_vllm.model.manifest import ManifestError, ModelManifest, load_manifest
from zarf_vllm.model.sizing import (
    NO_OVERRIDES,
    Costs,
    Fit,
    Hardware,
    ModelFacts,
    Overrides,
    Refused,
)
from zarf_vllm.packaging import deploy_variables, project

VALUES_TEMPLATE = "zarf/values.yaml.j2"
IMAGE_REPOSITORY = "zarf.internal/zarf-vllm/model-{id}"
FLAVORS = ("cpu", "cuda")


class ProfileError(ValueError):
    """A profile file that cannot be read, or values that do not match the chart."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuSpec(_Strict):
    count: Annotated[int | None, Field(ge=0, le=64, description="GPUs per node; 0: CPU only")]
    memory_mib: Annotated[int | None, Field(ge=0, description="Each GPU's total, as nvidia-smi")]
    compute_capability: Annotated[
        str | None,
        Field(
            pattern=r"^[0-9]{1,2}\.[0-9]$",
            description="The GPUs' CUDA compute capability (8.9 or newer has FP8: "
            "sizing.FP8_MIN_CAPABILITY); null on the CPU and where not known (custom)",
        ),
    ]


class HostSpec(_Strict):
    cpu: Annotated[int | None, Field(gt=0, description="Cores (CPU profile)")] = None
    cpu_per_gpu: Annotated[int | None, Field(gt=0, description="Cores per GPU in use")] = None
    memory_gib: Annotated[
        int | None, Field(gt=0, description="The most memory a node of this class gives a pod")
    ]
    max_cpu: Annotated[
        int | None,
        Field(gt=0, description="The most cores (logical CPUs) a node of this class gives a pod"),
    ]


class EngineSpec(_Strict):
    gpu_memory_utilization: Annotated[float, Field(ge=0.1, le=0.99)]
    max_model_len: Annotated[int, Field(ge=sizing.USABLE_CONTEXT)]
    max_num_seqs: Annotated[int, Field(gt=0)]
    max_num_batched_tokens: Annotated[int, Field(gt=0)]
    enforce_eager: bool
    cpu_kvcache_space_gib: Annotated[int | None, Field(gt=0)] = None

    @model_validator(mode="after")
    def _consistent(self) -> EngineSpec:
        if self.max_model_len % sizing.BLOCK_SIZE:
            raise ValueError(f"max_model_len must be a multiple of {sizing.BLOCK_SIZE}")
        if round(self.gpu_memory_utilization * 100) != self.gpu_memory_utilization * 100:
            raise ValueError("gpu_memory_utilization takes at most two decimals")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be at least max_num_seqs")
        return self


class Toleration(_Strict):
    key: str
    operator: Literal["Exists", "Equal"]
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class Scheduling(_Strict):
    node_selector: dict[str, str]
    tolerations: list[Toleration]
    runtime_class: str | None


class Profile(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*[a-z0-9]$")]
    order: int
    description: str
    gpu: GpuSpec
    host: HostSpec
    engine: EngineSpec
    scheduling: Scheduling
    # Nodes one serving group spans (a LeaderWorkerSet): gpu and host are each node's.
    nodes: Annotated[int, Field(ge=1, le=sizing.MAX_NODES, description="Nodes per group")] = 1

    @model_validator(mode="after")
    def _kind_consistent(self) -> Profile:
        cpu_only = self.gpu.count == 0
        per_gpu = self.host.cpu_per_gpu is not None
        if cpu_only != (self.host.cpu is not None) or cpu_only == per_gpu:
            raise ValueError("host.cpu is for the CPU profile, host.cpu_per_gpu for GPU profiles")
        if cpu_only != (self.engine.cpu_kvcache_space_gib is not None):
            raise ValueError("engine.cpu_kvcache_space_gib is required on the CPU, and only there")
        if (self.gpu.count is None) != (self.gpu.memory_mib is None):
            raise ValueError("gpu.count and gpu.memory_mib are both given or both null (custom)")
        if cpu_only and self.gpu.compute_capability is not None:
            raise ValueError("gpu.compute_capability is null on the CPU")
        if (self.gpu.count is None) != (self.host.max_cpu is None):
            raise ValueError("host.max_cpu is null for custom, and only there")
        if self.nodes > 1 and not self.gpu.count:
            raise ValueError("nodes > 1 is for GPU profiles with a fixed GPU count per node")
        hardware = self.hardware
        default_cpu = hardware.host_cpu * max(hardware.gpu_count or 1, 1)
        if self.host.max_cpu is not None and default_cpu > self.host.max_cpu:
            raise ValueError(f"host.max_cpu is less than the {default_cpu} cores the pod asks for")
        return self

    @property
    def hardware(self) -> Hardware:
        return Hardware(
            name=self.name,
            gpu_count=self.gpu.count,
            gpu_memory_mib=self.gpu.memory_mib,
            host_cpu=self.host.cpu or self.host.cpu_per_gpu or 1,
            host_memory_gib=self.host.memory_gib,
            host_max_cpu=self.host.max_cpu,
            util_permille=round(self.engine.gpu_memory_utilization * 1000),
            max_model_len=self.engine.max_model_len,
            max_num_seqs=self.engine.max_num_seqs,
            max_num_batched_tokens=self.engine.max_num_batched_tokens,
            enforce_eager=self.engine.enforce_eager,
            cpu_kvcache_gib=self.engine.cpu_kvcache_space_gib,
            nodes=self.nodes,
            compute_capability=self.gpu.compute_capability,
        )

    @property
    def variable_driven(self) -> bool:
        """True for `custom`: its GPUs come from variables, so nothing can be sized ahead."""
        return self.gpu.count is None


def load_profiles(chart_dir: Path | None = None) -> list[Profile]:
    """Every profile in chart/profiles/, in their `order`."""
    chart_dir = chart_dir or project.chart_dir()
    profiles = []
    for path in sorted((chart_dir / "profiles").glob("*.yaml")):
        try:
            profile = Profile.model_validate(yaml.safe_load(path.read_text()))
        except (yaml.YAMLError, ValidationError) as exc:
            raise ProfileError(f"{path}: invalid profile: {exc}") from exc
        if profile.name != path.stem:
            raise ProfileError(f"{path}: name {profile.name!r} must match the file name")
        profiles.append(profile)
    if not profiles:
        raise ProfileError(f"no profiles in {chart_dir / 'profiles'}")
    return sorted(profiles, key=lambda p: p.order)


def load_catalog(manifests_dir: Path | None = None) -> list[ModelManifest]:
    """Every manifest in model-manifests/: the models a refusal can suggest instead."""
    manifests_dir = manifests_dir or project.manifests_dir()
    return [load_manifest(path) for path in sorted(manifests_dir.glob("*.yaml"))]


@dataclass(frozen=True)
class Outcome:
    """One profile for one model, without overrides: the fit, or the refusal's reason."""

    profile: Profile
    fit: Fit | None
    reason: str | None


def outcomes(model: ModelFacts, profiles: Iterable[Profile]) -> list[Outcome]:
    """Sizes the model on every profile that can be sized ahead (all but `custom`)."""
    results = []
    for profile in profiles:
        if profile.variable_driven:
            continue
        try:
            results.append(Outcome(profile, sizing.size(model, profile.hardware), None))
        except Refused as exc:
            results.append(Outcome(profile, None, str(exc)))
    return results


def fitting_manifests(profile: Profile, catalog: Iterable[ModelManifest]) -> list[str]:
    if profile.variable_driven:
        return []
    ids = []
    for manifest in catalog:
        try:
            sizing.size(ModelFacts.from_manifest(manifest), profile.hardware)
        except Refused:
            continue
        ids.append(manifest.id)
    return ids


def size_or_refuse(
    manifest: ModelManifest,
    profile: Profile,
    profiles: Sequence[Profile],
    catalog: Iterable[ModelManifest],
    overrides: Overrides = NO_OVERRIDES,
    flavor: str | None = None,
) -> Fit:
    """`sizing.size`, with a misfit's message naming what would fit (as the chart says it)."""
    model = ModelFacts.from_manifest(manifest)
    try:
        return sizing.size(model, profile.hardware, overrides, flavor)
    except Refused as exc:
        if not exc.fit:
            raise
        fits = [o.fit.summary for o in outcomes(model, profiles) if o.fit]
        manifests = fitting_manifests(profile, catalog)
        raise _with_alternatives(exc, model.id, fits, manifests, profile) from exc


def _with_alternatives(
    exc: Refused, model_id: str, fits: Sequence[str], manifests: Sequence[str], profile: Profile
) -> Refused:
    """A lack of room's refusal, naming what would fit; a bad choice of values as it is."""
    if not exc.fit:
        return exc
    suffix = sizing.alternatives(model_id, fits, manifests, profile.name)
    return Refused(str(exc) + suffix, fit=True)


def model_image(manifest_id: str, version: str, flavor: str) -> tuple[str, str]:
    """(repository, tag) of the model image that issue 5's scripts build."""
    return IMAGE_REPOSITORY.format(id=manifest_id), f"{version}-{flavor}"


def _camel_dict(obj: object) -> dict:
    return {deploy_variables.camel_case(k): v for k, v in dataclasses.asdict(obj).items()}  # type: ignore[arg-type]


def fit_values(fit: Fit) -> dict:
    """A decided fit as the chart reads it; an absent KV cache is -1, as the chart's override
    check writes it."""
    values = _camel_dict(fit)
    if fit.kv_capacity_tokens is None:
        values["kvCapacityTokens"] = -1
    return values


def costs_values(costs: Costs) -> dict:
    values = _camel_dict(costs)
    values["tensorParallel"] = {
        str(t): _camel_dict(cost) for t, cost in costs.tensor_parallel.items()
    }
    # Map keys are strings in Helm, and ranging over a map goes in string order ("16" < "2"):
    # the override check walks the sizes through this list, smallest first, as Python does.
    values["tensorParallelSizes"] = sorted(costs.tensor_parallel)
    return values


def _hardware_values(hardware: Hardware) -> dict:
    values = _camel_dict(hardware)
    values["flavor"] = hardware.flavor
    # Whether QUANTIZATION=fp8 and KV_CACHE_DTYPE=fp8 may run, and the GPUs as a refusal names them.
    values["fp8"] = hardware.fp8
    values["capabilityText"] = hardware.capability_text
    # What each bounded override may reach on this profile (null: only sizing.BOUNDS' own).
    values["bounds"] = {
        deploy_variables.camel_case(b.field): hardware.bound(b.field) for b in sizing.BOUNDS
    }
    return values


def _profile_values(
    profile: Profile, model: ModelFacts, fits: Sequence[str], manifests: Sequence[str]
) -> dict:
    """One profile as the chart reads it: its hardware, where it schedules, and the fit (or
    the refusal) decided here without overrides. `fits`: the profiles that fit the model;
    `manifests`: the manifests that fit this profile (both named in refusals)."""
    try:
        fit, refusal = sizing.size(model, profile.hardware), None
    except Refused as exc:
        fit, refusal = None, str(_with_alternatives(exc, model.id, fits, manifests, profile))
    if fit is not None:
        kv = (
            "no KV cache"
            if fit.kv_capacity_tokens is None
            else (f"KV cache {fit.kv_capacity_tokens} tokens")
        )
        note = (
            f"fits: {fit.parallelism}, max_model_len {fit.max_model_len}, {kv}, "
            f"{fit.host_memory_gib} GiB host memory"
        )
    else:
        note = f"refused: {refusal}"
    scheduling: dict[str, object] = {
        "nodeSelector": profile.scheduling.node_selector,
        "tolerations": [t.model_dump(exclude_none=True) for t in profile.scheduling.tolerations],
    }
    if profile.scheduling.runtime_class:
        scheduling["runtimeClassName"] = profile.scheduling.runtime_class
    return {
        "note": note,
        "values": {
            "description": profile.description,
            "hardware": _hardware_values(profile.hardware),
            "scheduling": scheduling,
            "fitsManifests": manifests,
            "fit": None if fit is None else fit_values(fit),
            "refusal": refusal,
        },
    }


def _model_values(manifest: ModelManifest) -> dict:
    return {
        "id": manifest.id,
        "displayName": manifest.display_name,
        # Each gets a gRPC port and a LeapfrogAI discovery entry (zarf-vllm.adapterPorts).
        "adapters": [adapter.name for adapter in manifest.adapters],
    }


def _constants(chart_dir: Path) -> dict[str, object]:
    """The few constants the chart's override check and the Deployment read, and the lists
    it walks (which overrides to parse and how; which are GPU-only), so it holds none."""
    table = deploy_variables.load(chart_dir.parent)
    return {
        "overrides": table.chart_overrides(),
        "gpuOnly": [
            {"field": deploy_variables.camel_case(field), "variable": variable}
            for field, variable in sizing.GPU_ONLY_VARIABLES.items()
        ],
        "gib": sizing.GIB,
        "mib": sizing.MIB,
        "blockSize": sizing.BLOCK_SIZE,
        "cpuBlockSize": sizing.CPU_BLOCK_SIZE,
        "usefulKvSequences": sizing.USEFUL_KV_SEQUENCES,
        "bounds": [
            {**_camel_dict(bound), "field": deploy_variables.camel_case(bound.field)}
            for bound in sizing.BOUNDS
        ],
        "kvUsablePercent": sizing.KV_USABLE_PERCENT,
        "maxHostCpu": sizing.MAX_HOST_CPU,
        "hostBytesPerFrontEnd": sizing.HOST_BYTES_PER_FRONT_END,
        "cpuQuantizations": list(sizing.CPU_QUANTIZATIONS),
        "cudaTotalShortfallBytes": sizing.CUDA_TOTAL_SHORTFALL_BYTES,
        "freeAtStartShortfallBytes": sizing.FREE_AT_START_SHORTFALL_BYTES,
        "probePeriodSeconds": sizing.PROBE_PERIOD_SECONDS,
        "drainMarginSeconds": sizing.DRAIN_MARGIN_SECONDS,
    }


def render_values(
    manifest: ModelManifest,
    *,
    flavor: str,
    version: str = __version__,
    profiles: Sequence[Profile] | None = None,
    catalog: Sequence[ModelManifest] | None = None,
    chart_dir: Path | None = None,
    source: str = "",
) -> str:
    """The chart values of every profile for one model, as the package carries them."""
    if flavor not in FLAVORS:
        raise ProfileError(f"flavor must be one of {', '.join(FLAVORS)}, not {flavor!r}")
    chart_dir = chart_dir or project.chart_dir()
    profiles = list(profiles if profiles is not None else load_profiles(chart_dir))
    catalog = list(catalog if catalog is not None else load_catalog())
    model = ModelFacts.from_manifest(manifest)
    fits = [o.fit.summary for o in outcomes(model, profiles) if o.fit]
    costs = sizing.costs_for(model, flavor)
    # The override check needs the costs of each dtype CPU_DTYPE may choose (cpu flavor).
    costs_by_dtype = {costs.dtype: costs_values(costs)}
    for name in sizing.CPU_DTYPES if flavor == "cpu" else ():
        costs_by_dtype.setdefault(name, costs_values(sizing.costs_for(model, flavor, name)))
    repository, tag = model_image(manifest.id, version, flavor)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(chart_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    # Every value goes through tojson: JSON is YAML, so no quoting rule of YAML can bite.
    environment.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    text = environment.get_template(VALUES_TEMPLATE).render(
        source=source or manifest.id,
        flavor=flavor,
        default_profile="cpu" if flavor == "cpu" else "",
        image={"repository": repository, "tag": tag},
        model=_model_values(manifest),
        costs=costs_by_dtype,
        default_dtype=costs.dtype,
        constants=_constants(chart_dir),
        startup_failure_threshold=sizing.ceil_div(
            costs.startup_seconds, sizing.PROBE_PERIOD_SECONDS
        ),
        messages=sizing.MESSAGES,
        profile_names=[p.name for p in profiles],
        fits=fits,
        profiles={
            p.name: _profile_values(p, model, fits, fitting_manifests(p, catalog)) for p in profiles
        },
    )
    check_values(yaml.safe_load(text), chart_dir)
    return text


def check_values(values: dict, chart_dir: Path | None = None) -> None:
    """Validates rendered values against the chart's values.schema.json."""
    chart_dir = chart_dir or project.chart_dir()
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    try:
        jsonschema.validate(values, schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "values"
        raise ProfileError(
            f"rendered values fail values.schema.json at {where}: {exc.message}"
        ) from exc


def fit_table(catalog: Sequence[ModelManifest], profiles: Sequence[Profile]) -> str:
    """A Markdown table: each manifest on each profile, "TP t / max_model_len" or a refusal."""
    sized = [p for p in profiles if not p.variable_driven]
    lines = [
        "| manifest | weights | " + " | ".join(p.name for p in sized) + " |",
        "|---|---:|" + "---|" * len(sized),
    ]
    for manifest in catalog:
        model = ModelFacts.from_manifest(manifest)
        cells = []
        for outcome in outcomes(model, sized):
            fit = outcome.fit
            cells.append(f"{fit.parallelism} / {fit.max_model_len}" if fit else "no")
        weights = f"{model.weight_bytes / sizing.GIB:.2f} GiB"
        lines.append(f"| {manifest.id} | {weights} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_manifest_or_error(path: Path) -> ModelManifest:
    try:
        return load_manifest(path)
    except ManifestError as exc:
        raise ProfileError(str(exc)) from exc
