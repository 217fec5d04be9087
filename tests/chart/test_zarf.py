"""zarf.yaml and its deploy variables: Zarf v0.84's own schema, its import and flavor rules, and
agreement with the chart. The variables are read from their one table
(chart/zarf/deploy-variables.yaml), never from a copy kept here."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pydantic
import pytest
import yaml

from support.paths import CHART as CHART_DIR
from support.paths import REPO
from support.profiles_fixtures import MANIFEST_IDS, manifest, zarf_schema
from zarf_vllm import __version__
from zarf_vllm.model import sizing
from zarf_vllm.packaging import deploy_variables
from zarf_vllm.packaging.deploy_variables import DeployVariable, go_match, portability_problem
from zarf_vllm.packaging.preview import (
    PreviewError,
    default_package_name,
    fill_package_templates,
    load_package,
    package_variables,
    preview,
)
from zarf_vllm.packaging.profiles import model_image

ZARF_YAML = REPO / "zarf.yaml"
SHARED_COMPONENT = REPO / "components" / "model-backend" / "zarf.yaml"
ZARF_TEXT = ZARF_YAML.read_text()
RAW = yaml.safe_load(ZARF_TEXT)
FLAVORS = ("cpu", "cuda")
TABLE = deploy_variables.load(REPO)
# Values no pattern may accept: shell and YAML syntax, spaces, non-ASCII, and a trailing
# newline (which Python's `$` would let through and Go's does not).
JUNK = ("has space", "semi;colon", "$(reboot)", "quote'", "ünïcode", "-dash", "INFO\n", "\n")


def templates_for(manifest_id: str) -> dict[str, str]:
    return {"MODEL": manifest_id, "NAME": default_package_name(manifest_id), "VERSION": "0.1.0"}


def templated(path: Path, manifest_id: str) -> dict:
    """A zarf.yaml as `zarf package create --set MODEL=... --set NAME=... --set VERSION=...`
    reads it, before composing."""
    return yaml.safe_load(fill_package_templates(path.read_text(), templates_for(manifest_id)))


def composed(manifest_id: str, flavor: str) -> dict:
    return load_package(ZARF_YAML, templates_for(manifest_id), flavor)


def at(tree: dict, variable: DeployVariable, *, schema: bool = False) -> object:
    """What `tree` (a values file, or with `schema` a JSON schema) holds at the variable's path."""
    node = tree
    for key in variable.path:
        node = node["properties"][key] if schema else node[key]
    return node


# --- the generated files --------------------------------------------------------------------


def test_every_generated_file_is_what_the_table_makes() -> None:
    drifted = deploy_variables.drifted(REPO, TABLE)
    assert drifted == [], f"out of date with {deploy_variables.TABLE}: {drifted}; run " + (
        deploy_variables.GENERATOR
    )


def test_check_mode_names_the_drifted_file_and_writing_repairs_it(tmp_path: Path) -> None:
    paths = [deploy_variables.TABLE] + [a.path for a in deploy_variables.artefacts(TABLE)]
    for path in paths:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    values = tmp_path / "chart/values.yaml"
    values.write_text(values.read_text().replace('logLevel: "INFO"', 'logLevel: "DEBUG"'))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        module = "zarf_vllm.packaging.deploy_variables"
        command = [sys.executable, "-m", module, "--root", str(tmp_path), *args]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    check = run("--check")
    assert check.returncode == 1 and check.stderr.split()[-1] == "chart/values.yaml", check.stderr
    assert values.read_text().count('logLevel: "DEBUG"') == 1  # --check writes nothing
    assert run().stdout == "wrote chart/values.yaml\n"
    assert run("--check").returncode == 0
    assert values.read_text() == (REPO / "chart/values.yaml").read_text()


def test_a_file_without_its_markers_is_an_error_not_a_rewrite(tmp_path: Path) -> None:
    with pytest.raises(deploy_variables.DriftError, match=r"README\.md: the markers"):
        deploy_variables.between_markers(
            "no markers",
            deploy_variables.README_BEGIN,
            deploy_variables.README_END,
            "",
            "README.md",
        )


def test_every_variable_reaches_the_chart_with_its_default_and_pattern() -> None:
    markers = yaml.safe_load((CHART_DIR / "zarf" / "variables.yaml").read_text())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert [v.name for v in package_variables(RAW)] == [v.name for v in TABLE.variables]
    for declared, variable in zip(RAW["variables"], TABLE.variables, strict=True):
        wanted = variable.model_dump(include={"name", "description", "default", "pattern"})
        assert declared == wanted
        assert at(markers, variable) == f"###ZARF_VAR_{variable.name}###"
        assert at(defaults, variable) == variable.default
        prop = at(schema, variable, schema=True)
        assert (prop["type"], prop["pattern"]) == ("string", variable.pattern), variable.name
    # Nothing else in the values file Zarf fills: every marker is a variable's.
    text = (CHART_DIR / "zarf" / "variables.yaml").read_text()
    assert len(re.findall(r"\"###ZARF_VAR_[A-Z_]+###\"", text)) == len(TABLE.variables)


def test_the_schema_refuses_what_the_patterns_refuse() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    for variable in TABLE.variables:
        prop = at(schema, variable, schema=True)
        jsonschema.validate(variable.default, prop)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate("has space", prop)


# --- the table ------------------------------------------------------------------------------


def test_every_pattern_accepts_its_default_and_rejects_junk() -> None:
    for variable in TABLE.variables:
        assert variable.accepts(variable.default), variable.name
        for junk in JUNK:
            assert not variable.accepts(junk), (variable.name, junk)
        assert not variable.accepts(variable.default + "\n"), variable.name


@pytest.mark.parametrize(
    ("name", "good"),
    [
        ("PROFILE", ["cpu", "h100-80gb-x4", "custom"]),
        ("GPU_COUNT", ["1", "8", "64"]),
        ("GPU_MEMORY_UTILIZATION", ["0.9", "0.92", "0.1"]),
        ("NODE_SELECTOR", ["pool=gpu", "nvidia.com/gpu.product=NVIDIA-H100,zone="]),
        ("TOLERATIONS", ["dedicated=llm:NoSchedule,nvidia.com/gpu:NoExecute"]),
        ("RUNTIME_CLASS", ["nvidia", "none"]),
        ("MODEL_NAME", ["vllm", "llama-3.1:8b"]),
        ("QUANTIZATION", ["fp8", "awq", "gptq", "compressed-tensors"]),
    ],
)
def test_patterns_accept_real_values_and_refuse_near_misses(name: str, good: list[str]) -> None:
    variable = TABLE.by_name()[name]
    for value in good:
        assert variable.accepts(value), value
    near_misses = {
        "PROFILE": ["CPU", "cpu-"],
        "GPU_COUNT": ["0", "65", "08"],
        "GPU_MEMORY_UTILIZATION": ["1", "0.0", "0.995", ".9"],
        "NODE_SELECTOR": ["pool", "pool=gpu,", "=gpu"],
        "TOLERATIONS": ["key:Sometimes", "key=:NoSchedule"],
        "RUNTIME_CLASS": ["Nvidia", "-x"],
        "MODEL_NAME": [".hidden", "a b"],
        "QUANTIZATION": ["FP8", "fp8_per_tensor", "none", "bitsandbytes"],
    }[name]
    for value in near_misses:
        assert not variable.accepts(value), value


def test_patterns_mean_the_same_to_gos_search_and_a_full_match() -> None:
    # Zarf (Go's regexp.MatchString) searches; a full match is what the anchors intend.
    # Go's `$` is go_match's; Python's own `$` is what differs (it allows a final "\n").
    for variable in TABLE.variables:
        assert portability_problem(variable.pattern) is None, variable.name
        probes = [variable.default, *JUNK, variable.default + "\n", "\n" + variable.default]
        probes += [variable.default + "x", "x" + variable.default, "auto", "0.9", "8192", "a=b"]
        for probe in probes:
            expected = re.fullmatch(variable.pattern, probe) is not None
            assert go_match(variable.pattern, probe) == expected, (variable.name, probe)


def test_go_match_reads_dollar_as_the_end_of_the_text() -> None:
    assert re.search(r"^[0-9]+$", "8192\n")  # Python's `$`: the reason go_match exists
    assert not go_match(r"^[0-9]+$", "8192\n")
    assert go_match(r"^[0-9]+$", "8192")
    assert go_match(r"^[$]$", "$") and go_match(r"^a\$$", "a$")  # a literal $ stays literal
    assert go_match(r"^[]x]$", "]")  # `]` first in a class is a member, as in Go
    assert go_match("b", "abc")  # unanchored patterns search, as Go's MatchString does


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("[0-9]+", "anchored"),
        ("^a|b$", "top-level |"),
        (r"^\d+$", r"\d"),
        ("^(?=a)a$", "only (?:...)"),
        ("^(?i)a$", "only (?:...)"),
        ("^[[:alpha:]]$", "POSIX"),
        (r"^(a)\1$", r"\1"),
    ],
)
def test_the_table_refuses_patterns_that_go_and_python_would_read_apart(
    pattern: str, problem: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(problem)):
        DeployVariable(
            name="X", value="x", pattern=pattern, summary="a short summary", description="d" * 30
        )


def test_the_table_refuses_a_default_its_pattern_refuses_and_an_unknown_sizing_field() -> None:
    base = {"name": "X", "value": "x", "summary": "a short summary", "description": "d" * 30}
    with pytest.raises(pydantic.ValidationError, match="fails its own pattern"):
        DeployVariable(**base, pattern="^[a-z]+$", default="")
    with pytest.raises(pydantic.ValidationError, match="no field of"):
        DeployVariable(**base, pattern="^[a-z]*$", sizing="max_len")


def test_every_sizing_field_is_a_field_of_the_sizing_overrides() -> None:
    fields = {f.name for f in dataclasses.fields(sizing.Overrides)}
    named = [v.sizing for v in TABLE.variables if v.sizing]
    assert set(named) <= fields
    # Every override the sizing knows is a deploy variable.
    assert set(named) == fields
    # They are overrides of the profile (the scheduling ones, NODE_SELECTOR..., have none).
    assert all(v.path[0] == "overrides" for v in TABLE.variables if v.sizing)


def test_the_table_turns_variable_values_into_sizing_overrides() -> None:
    values = {"GPU_MEMORY_UTILIZATION": "0.92", "MAX_MODEL_LEN": "8192", "KV_CACHE_DTYPE": "fp8"}
    assert TABLE.overrides({**values, "HOST_CPU": "", "LOG_LEVEL": "INFO"}) == sizing.Overrides(
        util_permille=920, max_model_len=8192, kv_cache_dtype="fp8"
    )
    assert TABLE.overrides({}) == sizing.NO_OVERRIDES


# --- Zarf's deploy, through preview ---------------------------------------------------------


def test_preview_refuses_a_value_with_a_trailing_newline_as_zarf_does() -> None:
    demo = manifest("smollm2-135m-instruct")
    with pytest.raises(PreviewError, match='variable "MAX_MODEL_LEN" does not match pattern'):
        preview(demo, {"PROFILE": "cpu", "MAX_MODEL_LEN": "8192\n"}, flavor="cpu")


# --- zarf.yaml and its import ---------------------------------------------------------------


@pytest.mark.parametrize("manifest_id", MANIFEST_IDS)
def test_zarf_yaml_passes_zarfs_schema_once_templated(manifest_id: str) -> None:
    schema = zarf_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(templated(ZARF_YAML, manifest_id))
    validator.validate(templated(SHARED_COMPONENT, manifest_id))
    for flavor in FLAVORS:  # and what Zarf composes of it (`zarf dev inspect definition`)
        validator.validate(composed(manifest_id, flavor))


def test_the_schema_check_can_fail() -> None:
    broken = templated(ZARF_YAML, "smollm2-135m-instruct")
    broken["variables"][0]["name"] = "profile"  # Zarf wants upper case
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(zarf_schema()).validate(broken)


def test_package_templates_are_model_name_and_version() -> None:
    texts = ZARF_TEXT + SHARED_COMPONENT.read_text()
    assert set(re.findall(r"###ZARF_PKG_TMPL_([A-Z_]+)###", texts)) == {"MODEL", "NAME", "VERSION"}
    # Unquoted, a template would start a YAML comment and vanish before Zarf fills it.
    assert RAW["metadata"]["name"] == "###ZARF_PKG_TMPL_NAME###"
    assert RAW["metadata"]["version"] == "###ZARF_PKG_TMPL_VERSION###"
    config = tomllib.loads((REPO / "zarf-config.toml").read_text())["package"]["create"]["set"]
    assert config["version"] == __version__
    assert config["model"] in MANIFEST_IDS
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", config["name"])
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == __version__


@pytest.mark.parametrize("flavor", FLAVORS)
def test_one_component_per_flavor_with_chart_images_and_create_steps(flavor: str) -> None:
    package = composed("llama-3.1-8b-instruct", flavor)
    [component] = package["components"]
    assert component["only"] == {"flavor": flavor} and component["required"] is True
    assert "import" not in component
    repository, tag = model_image("llama-3.1-8b-instruct", "0.1.0", flavor)
    assert component["images"] == [f"{repository}:{tag}"]
    [chart] = component["charts"]
    assert chart["localPath"] == "chart" and chart["releaseName"] == "vllm-llama-3-1-8b-instruct"
    assert chart["noWait"] is True and chart["namespace"] == "leapfrogai"
    values_file = f"build/values/llama-3.1-8b-instruct-{flavor}.yaml"
    assert chart["valuesFiles"] == ["chart/zarf/variables.yaml", values_file]
    steps = component["actions"]["onCreate"]["before"]
    commands = [a["cmd"] for a in steps]
    assert [c.split()[0] for c in commands] == [
        "scripts/pull",
        "scripts/verify",
        "scripts/render-values",
        "scripts/build-images",
        "scripts/image",
    ]
    # Every step runs at the package root, the imported ones included.
    assert {a.get("dir", ".") for a in steps} == {"."}
    assert f"--flavor {flavor} --version 0.1.0 --out {values_file}" in commands[2]
    assert commands[3] == f"scripts/build-images --flavor {flavor}"
    assert f"--tag {repository}:{tag}" in commands[4]
    assert f"--base zarf.internal/zarf-vllm/backend:0.1.0-{flavor}" in commands[4]
    for script in ("pull", "verify", "render-values", "build-images", "image", "preview"):
        assert (REPO / "scripts" / script).exists(), script
    [wait] = component["actions"]["onDeploy"]["after"]
    assert wait["wait"]["cluster"] == {
        "kind": "Deployment",
        "name": "vllm-llama-3-1-8b-instruct",
        "namespace": "leapfrogai",
        "condition": "Available",
    }
    assert wait["maxTotalSeconds"] >= 3600
    assert [v["name"] for v in package["variables"]] == [v.name for v in TABLE.variables]


def test_the_flavors_differ_only_where_they_must() -> None:
    def normalized(component: dict, flavor: str) -> str:
        rest = {k: v for k, v in component.items() if k != "description"}
        return json.dumps(rest).replace(flavor, "FLAVOR")

    cpu, cuda = RAW["components"]
    assert (cpu["only"], cuda["only"]) == ({"flavor": "cpu"}, {"flavor": "cuda"})
    assert normalized(cpu, "cpu") == normalized(cuda, "cuda")
    # What they share is imported, once; it names no flavor.
    assert cpu["import"] == cuda["import"] == {"path": "components/model-backend"}
    shared = SHARED_COMPONENT.read_text()
    [common] = yaml.safe_load(shared)["components"]
    assert "only" not in common and not re.search(r"\b(cpu|cuda)\b", json.dumps(common))
    # Each flavor adds only its image, its values file and the steps that build them.
    assert set(cpu) - {"name", "description", "required", "only", "import"} == {
        "images",
        "charts",
        "actions",
    }
    assert [c["name"] for c in cpu["charts"]] == [c["name"] for c in common["charts"]]
    assert set(cpu["charts"][0]) == {"name", "valuesFiles"}
    assert normalized(composed("m", "cpu")["components"][0], "cpu") == normalized(
        composed("m", "cuda")["components"][0], "cuda"
    )


def _write(path: Path, package: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(package))


def test_preview_composes_imports_by_zarfs_rules(tmp_path: Path) -> None:
    child = {
        "kind": "ZarfPackageConfig",
        "metadata": {"name": "child"},
        "variables": [{"name": "A", "default": "child"}, {"name": "B", "default": "b"}],
        "components": [
            {
                "name": "base",
                "description": "the child's",
                "required": False,
                "charts": [
                    {
                        "name": "c",
                        "localPath": "../chart",
                        "namespace": "n",
                        "valuesFiles": ["values.yaml"],
                    }
                ],
                "actions": {
                    "onCreate": {"defaults": {"dir": ".."}, "before": [{"cmd": "one"}]},
                    "onDeploy": {"after": [{"cmd": "wait"}]},
                },
            },
            {"name": "base", "only": {"flavor": "other"}},  # not this flavor: ignored
        ],
    }
    parent = {
        "kind": "ZarfPackageConfig",
        "metadata": {"name": "parent"},
        "variables": [{"name": "A", "default": "parent"}],
        "components": [
            {
                "name": "app",
                "only": {"flavor": "f"},
                "import": {"path": "sub", "name": "base"},
                "charts": [{"name": "c", "namespace": "m", "valuesFiles": ["own.yaml"]}],
                "actions": {"onCreate": {"before": [{"cmd": "two"}]}},
            }
        ],
    }
    _write(tmp_path / "sub" / "zarf.yaml", child)
    _write(tmp_path / "zarf.yaml", parent)
    package = load_package(tmp_path / "zarf.yaml", {}, "f")
    [app] = package["components"]
    assert app["name"] == "app" and "required" not in app and app["description"] == "the child's"
    assert app["only"] == {"flavor": "f"}
    assert app["charts"] == [
        {
            "name": "c",
            "localPath": "chart",
            "namespace": "m",
            "valuesFiles": ["sub/values.yaml", "own.yaml"],
        }
    ]
    assert app["actions"]["onCreate"]["before"] == [{"cmd": "one", "dir": "."}, {"cmd": "two"}]
    assert app["actions"]["onDeploy"]["after"] == [{"cmd": "wait"}]
    assert package["variables"] == [{"name": "A", "default": "parent"}, child["variables"][1]]

    parent["components"][0]["import"]["name"] = "missing"
    _write(tmp_path / "zarf.yaml", parent)
    with pytest.raises(PreviewError, match="0 components named missing"):
        load_package(tmp_path / "zarf.yaml", {}, "f")


@pytest.mark.parametrize("manifest_id", MANIFEST_IDS)
def test_package_names_from_manifest_ids_are_valid(manifest_id: str) -> None:
    name = default_package_name(manifest_id)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", name) and len(name) <= 53
