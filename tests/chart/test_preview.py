"""The Zarf deploy emulation (backend.preview) and `scripts/preview`."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from support.paths import REPO
from support.profiles_fixtures import values_text
from zarf_vllm.packaging.preview import (
    PreviewError,
    Variable,
    deep_merge,
    default_package_name,
    fill_package_templates,
    resolve_variables,
    substitute,
)

VARIABLES = [
    Variable("PROFILE", "", r"^([a-z0-9][a-z0-9-]*[a-z0-9])?$", "the profile"),
    Variable("LOG_LEVEL", "INFO", r"^(DEBUG|INFO|WARNING|ERROR)$", "log level"),
    Variable("FREE", "x", None, "no pattern"),
]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts/preview"), *args], cwd=REPO, capture_output=True, text=True
    )


def test_variables_take_defaults_then_sets_with_names_upper_cased() -> None:
    values, unknown = resolve_variables(VARIABLES, {"profile": "l4-24gb", "NOPE": "1"})
    assert values == {"PROFILE": "l4-24gb", "LOG_LEVEL": "INFO", "FREE": "x"}
    assert unknown == ["NOPE"]


def test_every_final_value_meets_its_pattern_defaults_included() -> None:
    with pytest.raises(PreviewError, match='variable "LOG_LEVEL" does not match pattern'):
        resolve_variables(VARIABLES, {"log_level": "LOUD"})
    strict = [Variable("X", "bad default", r"^[a-z]+$", "x")]
    with pytest.raises(PreviewError, match='variable "X"'):
        resolve_variables(strict, {})


def test_substitution_and_package_templates() -> None:
    assert substitute("a: ###ZARF_VAR_A###, b: ###ZARF_VAR_B###", {"A": "1"}) == (
        "a: 1, b: ###ZARF_VAR_B###"
    )
    assert fill_package_templates("###ZARF_PKG_TMPL_MODEL###", {"MODEL": "m"}) == "m"
    with pytest.raises(PreviewError, match="package templates without a value: NAME"):
        fill_package_templates("###ZARF_PKG_TMPL_NAME###", {})
    assert default_package_name("Qwen2.5-0.5B-instruct") == "vllm-qwen2-5-0-5b-instruct"


def test_values_files_merge_like_helms() -> None:
    merged = deep_merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [2]}, "d": 1, "e": 2}


def test_preview_prints_the_objects_zarf_would_apply() -> None:
    done = run("--set", "profile=cpu")
    assert done.returncode == 0, done.stderr
    documents = [d for d in yaml.safe_load_all(done.stdout) if d]
    kinds = [d["kind"] for d in documents]
    # Helm's install order: policies, then config, then the Service, then the Deployment.
    assert kinds == [
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ConfigMap",
        "ConfigMap",
        "ConfigMap",
        "Service",
        "Deployment",
    ]
    assert "# Source: zarf-vllm/templates/deployment.yaml" in done.stdout
    assert "###ZARF_" not in done.stdout
    assert done.stderr == ""


def test_preview_sees_the_apis_the_cluster_serves() -> None:
    """--api-versions: what Helm's .Capabilities sees on a cluster with KEDA and the
    Prometheus operator; the `auto` objects appear, custom kinds after Helm's own order."""
    apis = (
        "keda.sh/v1alpha1/ScaledObject",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "monitoring.coreos.com/v1/PrometheusRule",
    )
    done = run(
        "--set", "PROFILE=cpu", "--set", "MAX_REPLICAS=3",
        *[arg for api in apis for arg in ("--api-versions", api)],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(done.stdout) if d]
    assert kinds[-4:-3] == ["Deployment"]
    assert sorted(kinds[-3:]) == ["PrometheusRule", "ScaledObject", "ServiceMonitor"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "PROFILE=h300"], 'unknown PROFILE "h300": valid profiles are cpu, l4-24gb'),
        (["--set", "PROFILE=cpu", "--set", "MAX_MODEL_LEN=4k"], 'variable "MAX_MODEL_LEN"'),
        (
            ["--manifest", "llama-3.1-70b-instruct", "--set", "PROFILE=a100-80gb"],
            "llama-3.1-70b-instruct does not fit profile a100-80gb",
        ),
        (["--set", "PROFILE=cpu", "--set", "HOST_MEMORY_GIB=2"], "HOST_MEMORY_GIB=2 is less"),
    ],
)
def test_a_refusal_exits_non_zero_with_the_message_and_prints_nothing_else(
    args: list[str], message: str
) -> None:
    done = run(*args)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_undeclared_variables_are_ignored_with_a_warning() -> None:
    done = run("--set", "PROFILE=cpu", "--set", "PROFIEL=l4")
    assert done.returncode == 0
    assert "declares no variable PROFIEL; Zarf ignores it" in done.stderr


def test_a_prebuilt_values_file_gives_the_same_objects(tmp_path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(values_text("llama-3.1-8b-instruct", "cuda"))
    sets = ["--set", "PROFILE=l4-24gb", "--set", "MAX_MODEL_LEN=8192"]
    prebuilt = run("--manifest", "llama-3.1-8b-instruct", "--values", str(path), *sets)
    fresh = run("--manifest", "llama-3.1-8b-instruct", *sets)
    assert prebuilt.returncode == 0, prebuilt.stderr
    assert prebuilt.stdout == fresh.stdout
    assert "max_model_len: 8192" in prebuilt.stdout
    # The values file fixes the flavor: a cpu profile on a cuda package is refused.
    wrong = run(
        "--manifest", "llama-3.1-8b-instruct", "--values", str(path), "--set", "PROFILE=cpu"
    )
    assert wrong.returncode == 1 and "needs the cpu flavor" in wrong.stderr
