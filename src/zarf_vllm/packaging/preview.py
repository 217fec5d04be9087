"""What `zarf package deploy` would apply, computed here without Zarf, a cluster or Helm's binary.

It follows Zarf's deploy of this package step by step, reading the real zarf.yaml:

1. package templates (###ZARF_PKG_TMPL_NAME###) filled as `zarf package create --set` does,
   the components of one flavor kept (`only.flavor`), and their `import`s composed as Zarf
   does (the flavored components import what they share from components/model-backend/);
2. deploy variables: their defaults, then `--set NAME=value` (names upper-cased), then every
   final value checked against its `pattern`;
3. ###ZARF_VAR_NAME### replaced in the chart's values files (the rendered values of every
   profile come from `zarf_vllm.packaging.profiles`, as `scripts/render-values` writes them
   at create);
4. the chart rendered by Helm itself (helm-python-sdk: Helm's Go code, in-process), with the
   values checked against values.schema.json first, as `helm install` does;
5. ###ZARF_VAR_NAME### replaced in the rendered manifests (Zarf's post-renderer).

Any refusal (a pattern, the schema, the chart's sizing helper) raises PreviewError: Zarf would
stop before applying anything. What the Zarf agent changes at admission (image references
rewritten to the in-cluster registry) is not shown.
"""

from __future__ import annotations

import copy
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zarf_vllm import __version__
from zarf_vllm.model.manifest import ModelManifest
from zarf_vllm.packaging import project
from zarf_vllm.packaging.deploy_variables import go_match
from zarf_vllm.packaging.profiles import render_values

# The values file the package's create step renders (scripts/render-values --out).
RENDERED_VALUES_DIR = "build/values/"
_PKG_TEMPLATE = re.compile(r"###ZARF_PKG_TMPL_([A-Z0-9_]+)###")

# Helm applies (and `helm template` prints) objects in this order of kinds (Helm's
# releaseutil.InstallOrder, the kinds a chart like this one can hold); others come last.
INSTALL_ORDER = (
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "Ingress",
)


class PreviewError(ValueError):
    """Zarf or Helm would refuse to deploy; the message says why."""


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    pattern: str | None
    description: str


def load_yaml(text: str) -> Any:
    """yaml.safe_load, with libyaml's parser where PyYAML has it (the values run to 20 kB)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@dataclass(frozen=True)
class Rendered:
    """One object as Helm would apply it: the template it came from, its YAML, parsed."""

    source: str
    text: str
    object: dict


def default_package_name(manifest_id: str) -> str:
    """NAME for a manifest id: a DNS label (no dots), short enough for a Helm release."""
    slug = re.sub(r"[^a-z0-9-]+", "-", manifest_id.lower()).strip("-")
    return f"vllm-{slug}"[:53].rstrip("-")


def fill_package_templates(text: str, values: Mapping[str, str]) -> str:
    """###ZARF_PKG_TMPL_NAME### -> value, as `zarf package create --set NAME=value`."""
    missing = sorted({m for m in _PKG_TEMPLATE.findall(text) if m not in values})
    if missing:
        raise PreviewError(f"package templates without a value: {', '.join(missing)}")
    return _PKG_TEMPLATE.sub(lambda m: values[m.group(1)], text)


def load_package(path: Path, templates: Mapping[str, str], flavor: str) -> dict:
    """zarf.yaml as `zarf package create --flavor FLAVOR --set ...` composes it: only the
    components of that flavor (or of none), each `import` resolved, and the templates filled.
    Paths in the result are relative to zarf.yaml's directory, as in Zarf's composed package."""
    return _compose(path, templates, flavor, only=None, stack=())


def _compose(
    path: Path, templates: Mapping[str, str], flavor: str, only: str | None, stack: tuple
) -> dict:
    """One zarf.yaml with its imports resolved; `only`: keep just the components of that name
    (what an importing component asks for), as Zarf does before it follows their imports."""
    base = path.parent.resolve()
    if base in stack:
        raise PreviewError(f"{path}: imported in a cycle")
    package = load_yaml(fill_package_templates(path.read_text(), templates))
    components, variables = [], list(package.get("variables", []))
    for component in package.get("components", []):
        if (only and component["name"] != only) or not _for_flavor(component, flavor):
            continue
        if "import" in component:
            component, imported = _import(component, path.parent, templates, flavor, (*stack, base))
            variables += imported
        components.append(component)
    package["components"] = components
    if variables:
        # Zarf appends the imported packages' variables; the first of a name wins.
        first: dict[str, dict] = {}
        for variable in variables:
            first.setdefault(variable["name"], variable)
        package["variables"] = list(first.values())
    return package


def _for_flavor(component: Mapping, flavor: str) -> bool:
    return component.get("only", {}).get("flavor") in (None, "", flavor)


def _import(
    component: dict, base: Path, templates: Mapping[str, str], flavor: str, stack: tuple
) -> tuple[dict, list[dict]]:
    """The importing component merged over the one it imports; and the imported variables."""
    spec = component["import"]
    if "url" in spec or "path" not in spec:
        raise PreviewError(f"component {component['name']}: only local imports are emulated")
    name = spec.get("name", component["name"])
    target = base / spec["path"]
    relative = spec["path"] if target.is_dir() else posixpath.dirname(spec["path"])
    manifest = target / "zarf.yaml" if target.is_dir() else target
    imported = _compose(manifest, templates, flavor, name, stack)
    found = imported["components"]
    if len(found) != 1:
        raise PreviewError(
            f"component {component['name']}: {len(found)} components named {name} "
            f"for flavor {flavor} in {manifest} (Zarf needs exactly one)"
        )
    child = _rebase(copy.deepcopy(found[0]), relative)
    return _merge(child, component), imported.get("variables", [])


def _joined(directory: str, path: str) -> str:
    """A path of the imported file, relative to the importing one (Go's filepath.Join)."""
    if "://" in path or posixpath.isabs(path):
        return path
    return posixpath.normpath(posixpath.join(directory, path))


def _rebase(child: dict, directory: str) -> dict:
    """The imported component's paths made relative to the importing package, as Zarf's
    fixPaths: charts, files, image archives, manifests, and the onCreate actions' dir."""
    for chart in child.get("charts", []):
        for key in ("valuesFiles", "templatedValuesFiles"):
            if key in chart:
                chart[key] = [_joined(directory, p) for p in chart[key]]
        if "localPath" in chart:
            chart["localPath"] = _joined(directory, chart["localPath"])
    for item in child.get("files", []):
        item["source"] = _joined(directory, item["source"])
    for archive in child.get("imageArchives", []):
        archive["path"] = _joined(directory, archive["path"])
    for manifest in child.get("manifests", []):
        manifest["files"] = [_joined(directory, p) for p in manifest.get("files", [])]
    on_create = child.get("actions", {}).get("onCreate", {})
    default_dir = on_create.get("defaults", {}).get("dir", "")
    for phase in _PHASES:
        for action in on_create.get(phase, []):
            # Every imported create step gets an explicit dir, so that the importing
            # component's defaults cannot move it.
            action["dir"] = _joined(directory, action.get("dir", default_dir))
    return child


_PHASES = ("before", "after", "onFailure", "onSuccess")
_APPENDED = ("images", "files", "repos", "dataInjections", "healthChecks", "imageArchives")


def _merge(child: dict, parent: Mapping) -> dict:
    """Zarf's override of an imported component by the importing one (v1alpha1): name and
    required/default from the importer, its description and flavor where it gives them,
    lists appended, charts and manifests of the same name merged."""
    # name, required, default and group are always the importer's, even when it leaves them out.
    merged = {k: v for k, v in child.items() if k not in ("required", "default", "group")}
    merged |= {k: parent[k] for k in ("name", "required", "default", "group") if k in parent}
    if parent.get("description"):
        merged["description"] = parent["description"]
    if parent.get("only", {}).get("flavor"):
        merged["only"] = {**child.get("only", {}), "flavor": parent["only"]["flavor"]}
    for key in _APPENDED:
        if child.get(key) or parent.get(key):
            merged[key] = [*child.get(key, []), *parent.get(key, [])]
    merged["charts"] = _merge_named(child.get("charts", []), parent.get("charts", []), _CHART)
    merged["manifests"] = _merge_named(
        child.get("manifests", []), parent.get("manifests", []), _MANIFEST
    )
    merged["actions"] = _merge_actions(child.get("actions", {}), parent.get("actions", {}))
    return {k: v for k, v in merged.items() if v not in ([], {})}


# What a chart or manifest of the importer replaces (when given) and appends to the import's.
_CHART = (
    ("namespace", "releaseName", "version", "url"),
    ("valuesFiles", "templatedValuesFiles", "variables", "values"),
)
_MANIFEST = (("namespace",), ("files", "kustomizations"))


def _merge_named(
    imported: list[dict], own: list[dict], rules: tuple[tuple[str, ...], tuple[str, ...]]
) -> list[dict]:
    replaced, appended = rules
    out = [dict(item) for item in imported]
    for item in own:
        same = [o for o in out if o["name"] == item["name"]]
        if not same:
            out.append(dict(item))
        for target in same:
            target.update({k: item[k] for k in replaced if item.get(k)})
            for key in appended:
                if item.get(key):
                    target[key] = [*target.get(key, []), *item[key]]
    return out


def _merge_actions(imported: Mapping, own: Mapping) -> dict:
    """Per stage: the importer's defaults, the import's actions then the importer's."""
    out: dict = {}
    for stage in ("onCreate", "onDeploy", "onRemove"):
        child, parent = imported.get(stage, {}), own.get(stage, {})
        merged = {"defaults": parent["defaults"]} if "defaults" in parent else {}
        for phase in _PHASES:
            actions = [*child.get(phase, []), *parent.get(phase, [])]
            if actions:
                merged[phase] = actions
        if merged:
            out[stage] = merged
    return out


def package_variables(package: Mapping) -> list[Variable]:
    return [
        Variable(v["name"], v.get("default", ""), v.get("pattern"), v.get("description", ""))
        for v in package.get("variables", [])
    ]


def resolve_variables(
    variables: Sequence[Variable], sets: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Final values (defaults, then --set), checked against the patterns; and the --set names
    the package does not declare (Zarf ignores them)."""
    values = {v.name: v.default for v in variables}
    unknown = []
    for name, value in sets.items():
        if name.upper() in values:
            values[name.upper()] = value
        else:
            unknown.append(name.upper())
    for variable in variables:
        value = values[variable.name]
        # Zarf matches with Go's regexp.MatchString: a search, anchored only by the pattern,
        # and its `$` is the end of the text (so "8192\n" fails ^[0-9]+$, unlike re.search).
        if variable.pattern is not None and not go_match(variable.pattern, value):
            raise PreviewError(
                f'provided value for variable "{variable.name}" does not match pattern '
                f'"{variable.pattern}" ({variable.description})'
            )
    return values, unknown


def substitute(text: str, values: Mapping[str, str]) -> str:
    """###ZARF_VAR_NAME### -> value for every declared variable (others stay as written)."""
    for name, value in values.items():
        text = text.replace(f"###ZARF_VAR_{name}###", value)
    return text


def deep_merge(base: dict, override: Mapping) -> dict:
    """Helm's merge of several values files: maps merge, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def render_chart(
    chart_dir: Path,
    values: dict,
    release: str,
    namespace: str,
    api_versions: Sequence[str] = (),
) -> list[Rendered]:
    """Helm's rendering of the chart (schema check first), objects in install order.

    `api_versions`: what the cluster serves besides Kubernetes' own APIs ("group/version" or
    "group/version/Kind", as `helm template --api-versions`), for the chart's `auto` checks."""
    from helm_python import errors
    from helm_python.chart import Chart

    with Chart.load(chart_dir) as chart:
        try:
            # As `helm install`: values.schema.json first, then the templates.
            files = _render(chart, values, release, namespace, api_versions)
        except errors.HelmError as exc:
            raise PreviewError(_helm_message(str(exc))) from exc
    objects = []
    for source, text in sorted(files.items()):
        if source.endswith("NOTES.txt"):
            continue
        for document in re.split(r"^---\s*$", text, flags=re.MULTILINE):
            obj = load_yaml(document)
            if isinstance(obj, dict):
                objects.append(Rendered(source, document.strip("\n") + "\n", obj))
    return sorted(objects, key=_install_rank)


def _render(
    chart: Any, values: dict, release: str, namespace: str, api_versions: Sequence[str]
) -> dict[str, str]:
    """chart.render, with the cluster's extra APIs when there are any."""
    if not api_versions:
        return chart.render(values=values, name=release, namespace=namespace, is_install=True)
    import json

    from helm_python import _native

    # helm-python-sdk's Chart.render (0.2.2, pinned) does not pass `api_versions` on, though
    # its native render reads that option as `helm template --api-versions` does.
    options = {
        "name": release,
        "namespace": namespace,
        "is_install": True,
        "api_versions": list(api_versions),
    }
    rendered = _native.call_string(
        "helm_render", chart._raw(), json.dumps(values), json.dumps(options)
    )
    return json.loads(rendered)


def _install_rank(item: Rendered) -> int:
    kind = item.object.get("kind", "")
    return INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)


def _helm_message(message: str) -> str:
    """A template's `fail` text without Helm's "execution error at (file:line:col): "."""
    return re.sub(r"^.*?execution error at \([^)]*\): ", "", message.strip(), flags=re.DOTALL)


@dataclass(frozen=True)
class Preview:
    objects: list[Rendered]
    variables: dict[str, str]
    unknown_sets: list[str]
    flavor: str

    def text(self) -> str:
        """The objects as a YAML stream, each headed by its template like `helm template`."""
        return "".join(f"---\n# Source: {o.source}\n{o.text}" for o in self.objects)


def preview(
    manifest: ModelManifest,
    sets: Mapping[str, str],
    *,
    flavor: str | None = None,
    rendered_values: str | None = None,
    name: str | None = None,
    zarf_yaml: Path | None = None,
    api_versions: Sequence[str] = (),
) -> Preview:
    """Everything `zarf package deploy --set ...` would apply for this model's package.

    `rendered_values`: the text `scripts/render-values` wrote for this model and flavor;
    rendered here when not given. `api_versions`: the APIs the target cluster serves beyond
    Kubernetes' own (such as keda.sh/v1alpha1/ScaledObject), which Helm would see there."""
    zarf_yaml = zarf_yaml or project.zarf_yaml()
    flavor = flavor or _flavor(sets, rendered_values)
    templates = {
        "MODEL": manifest.id,
        "NAME": name or default_package_name(manifest.id),
        "VERSION": __version__,
    }
    package = load_package(zarf_yaml, templates, flavor)
    values, unknown = resolve_variables(package_variables(package), sets)
    root = zarf_yaml.parent
    objects: list[Rendered] = []
    for component in package["components"]:
        for chart in component.get("charts", []):
            merged: dict = {}
            for path in chart.get("valuesFiles", []):
                if path.startswith(RENDERED_VALUES_DIR):
                    text = rendered_values or render_values(manifest, flavor=flavor)
                else:
                    text = (root / path).read_text()
                merged = deep_merge(merged, load_yaml(substitute(text, values)) or {})
            for item in render_chart(
                root / chart["localPath"],
                merged,
                chart.get("releaseName", chart["name"]),
                chart["namespace"],
                api_versions,
            ):
                text = substitute(item.text, values)
                obj = item.object if text == item.text else load_yaml(text)
                objects.append(Rendered(item.source, text, obj))
    return Preview(objects, values, unknown, flavor)


def _flavor(sets: Mapping[str, str], rendered_values: str | None) -> str:
    """The package flavor: that of a prebuilt values file, else the one PROFILE needs."""
    if rendered_values is not None:
        return str(load_yaml(rendered_values)["flavor"])
    profile = next((v for k, v in sets.items() if k.upper() == "PROFILE"), "")
    return "cpu" if profile in ("", "cpu") else "cuda"
