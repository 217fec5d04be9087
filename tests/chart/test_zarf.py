"""zarf.yaml: Zarf v0.84's own schema, its conventions, and agreement with the chart."""

from __future__ import annotations

import json
import re
import tomllib

import jsonschema
import pytest
import yaml

from support.paths import CHART as CHART_DIR
from support.profiles_fixtures import MANIFEST_IDS, REPO, zarf_schema
from zarf_vllm import __version__
from zarf_vllm.packaging.preview import (
    default_package_name,
    fill_package_templates,
    package_variables,
)
from zarf_vllm.packaging.profiles import model_image

ZARF_TEXT = (REPO / "zarf.yaml").read_text()
RAW = yaml.safe_load(ZARF_TEXT)
FLAVORS = ("cpu", "cuda")
# Deploy variable -> the chart value it sets (chart/zarf/variables.yaml).
VALUE_OF = {
    "PROFILE": "profile",
    "MODEL_NAME": "modelName",
    "LOG_LEVEL": "logLevel",
    "API_NAMESPACE": "apiNamespace",
    "MONITORING_NAMESPACE": "monitoringNamespace",
    "UDS_PACKAGE": "udsPackage",
    "SERVICE_MONITOR": "serviceMonitor",
    "GPU_COUNT": "overrides.gpuCount",
    "GPU_MEMORY_GIB": "overrides.gpuMemoryGib",
    "TENSOR_PARALLEL_SIZE": "overrides.tensorParallelSize",
    "MAX_MODEL_LEN": "overrides.maxModelLen",
    "GPU_MEMORY_UTILIZATION": "overrides.gpuMemoryUtilization",
    "MAX_NUM_SEQS": "overrides.maxNumSeqs",
    "MAX_NUM_BATCHED_TOKENS": "overrides.maxNumBatchedTokens",
    "KV_CACHE_DTYPE": "overrides.kvCacheDtype",
    "CPU_KVCACHE_GIB": "overrides.cpuKvcacheGib",
    "HOST_CPU": "overrides.hostCpu",
    "HOST_MEMORY_GIB": "overrides.hostMemoryGib",
    "NODE_SELECTOR": "overrides.nodeSelector",
    "TOLERATIONS": "overrides.tolerations",
    "RUNTIME_CLASS": "overrides.runtimeClass",
}


def templated(manifest_id: str) -> dict:
    """zarf.yaml as `zarf package create --set MODEL=... --set NAME=... --set VERSION=...`."""
    return yaml.safe_load(
        fill_package_templates(
            ZARF_TEXT,
            {"MODEL": manifest_id, "NAME": default_package_name(manifest_id), "VERSION": "0.1.0"},
        )
    )


@pytest.mark.parametrize("manifest_id", MANIFEST_IDS)
def test_zarf_yaml_passes_zarfs_schema_once_templated(manifest_id: str) -> None:
    schema = zarf_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator(schema).validate(templated(manifest_id))


def test_the_schema_check_can_fail() -> None:
    broken = templated("smollm2-135m-instruct")
    broken["variables"][0]["name"] = "profile"  # Zarf wants upper case
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(zarf_schema()).validate(broken)


def test_package_templates_are_model_name_and_version() -> None:
    assert set(re.findall(r"###ZARF_PKG_TMPL_([A-Z_]+)###", ZARF_TEXT)) == {
        "MODEL",
        "NAME",
        "VERSION",
    }
    # Unquoted, a template would start a YAML comment and vanish before Zarf fills it.
    assert RAW["metadata"]["name"] == "###ZARF_PKG_TMPL_NAME###"
    assert RAW["metadata"]["version"] == "###ZARF_PKG_TMPL_VERSION###"
    config = tomllib.loads((REPO / "zarf-config.toml").read_text())["package"]["create"]["set"]
    assert config["version"] == __version__
    assert config["model"] in MANIFEST_IDS
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", config["name"])
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == __version__


def test_every_variable_has_a_description_and_a_pattern_its_default_meets() -> None:
    variables = package_variables(RAW)
    assert {v.name for v in variables} == set(VALUE_OF)
    for variable in variables:
        assert re.fullmatch(r"[A-Z0-9_]+", variable.name)
        assert len(variable.description) > 20, variable.name
        assert (
            variable.pattern and variable.pattern.startswith("^") and variable.pattern.endswith("$")
        )
        assert re.search(variable.pattern, variable.default), variable.name


def test_every_variable_reaches_the_chart_and_its_schema_has_the_same_pattern() -> None:
    markers = yaml.safe_load((CHART_DIR / "zarf" / "variables.yaml").read_text())
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    for variable in package_variables(RAW):
        path = VALUE_OF[variable.name].split(".")
        node, prop = markers, schema
        for key in path:
            node = node[key]
            prop = prop["properties"][key]
        assert node == f"###ZARF_VAR_{variable.name}###"
        if "pattern" in prop:
            assert prop["pattern"] == variable.pattern, variable.name
        else:  # an enum in the schema
            assert all(re.search(variable.pattern, str(v)) for v in prop["enum"] if v != "")
            assert not re.search(variable.pattern, "nonsense")
    text = (CHART_DIR / "zarf" / "variables.yaml").read_text()
    assert len(re.findall(r"\"###ZARF_VAR_[A-Z_]+###\"", text)) == len(VALUE_OF)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_one_component_per_flavor_with_chart_images_and_create_steps(flavor: str) -> None:
    package = templated("llama-3.1-8b-instruct")
    [component] = [c for c in package["components"] if c["only"]["flavor"] == flavor]
    assert component["required"] is True
    repository, tag = model_image("llama-3.1-8b-instruct", "0.1.0", flavor)
    assert component["images"] == [f"{repository}:{tag}"]
    [chart] = component["charts"]
    assert chart["localPath"] == "chart" and chart["releaseName"] == "vllm-llama-3-1-8b-instruct"
    values_file = f"build/values/llama-3.1-8b-instruct-{flavor}.yaml"
    assert chart["valuesFiles"] == ["chart/zarf/variables.yaml", values_file]
    commands = [a["cmd"] for a in component["actions"]["onCreate"]["before"]]
    scripts = [c.split()[0] for c in commands]
    assert scripts == [
        "scripts/pull",
        "scripts/verify",
        "scripts/render-values",
        "scripts/build-images",
        "scripts/image",
    ]
    assert f"--flavor {flavor} --version 0.1.0 --out {values_file}" in commands[2]
    assert f"--tag {repository}:{tag}" in commands[4]
    assert f"--base zarf.internal/zarf-vllm/backend:0.1.0-{flavor}" in commands[4]
    for script in ("pull", "verify", "render-values", "preview"):
        assert (REPO / "scripts" / script).exists(), script
    [wait] = component["actions"]["onDeploy"]["after"]
    assert wait["wait"]["cluster"] == {
        "kind": "Deployment",
        "name": "vllm-llama-3-1-8b-instruct",
        "namespace": "leapfrogai",
        "condition": "Available",
    }
    assert wait["maxTotalSeconds"] >= 3600


def test_the_flavors_differ_only_in_flavor() -> None:
    def normalized(component: dict, flavor: str) -> str:
        rest = {k: v for k, v in component.items() if k != "description"}
        return json.dumps(rest).replace(flavor, "FLAVOR")

    cpu, cuda = RAW["components"]
    assert (cpu["only"], cuda["only"]) == ({"flavor": "cpu"}, {"flavor": "cuda"})
    assert normalized(cpu, "cpu") == normalized(cuda, "cuda")


@pytest.mark.parametrize("manifest_id", MANIFEST_IDS)
def test_package_names_from_manifest_ids_are_valid(manifest_id: str) -> None:
    name = default_package_name(manifest_id)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", name) and len(name) <= 53
