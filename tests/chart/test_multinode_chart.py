"""Profiles that span nodes, rendered by Helm through the Zarf deploy preview: a LeaderWorkerSet
group instead of the Deployment (leader `serve`, workers `worker`), refused on a cluster without
LeaderWorkerSet, and sized with pipeline parallel across the nodes."""

from __future__ import annotations

import pytest

from support.custom_resources import assert_valid
from support.profiles_fixtures import (
    LWS_API,
    PROFILES,
    config_of,
    python_fit,
    run_preview_on,
)
from zarf_vllm.model.sizing import Fit
from zarf_vllm.packaging.preview import Preview, PreviewError

MODEL = "llama-3.1-405b-instruct"
NAME = "vllm-llama-3-1-405b-instruct"
MULTI_NODE = [p.name for p in PROFILES if p.nodes > 1]
KEDA = "keda.sh/v1alpha1/ScaledObject"
LEADER_ONLY = {"leaderworkerset.sigs.k8s.io/worker-index": "0"}


def rendered(profile: str, apis: tuple[str, ...] = (LWS_API,), **sets: str) -> Preview:
    result = run_preview_on(apis, MODEL, PROFILE=profile, **sets)
    assert isinstance(result, Preview), str(result)
    return result


def of_kind(result: Preview, kind: str) -> list[dict]:
    return [i.object for i in result.objects if i.object["kind"] == kind]


def group(result: Preview) -> dict:
    (lws,) = of_kind(result, "LeaderWorkerSet")
    return lws


def fit_of(profile: str) -> Fit:
    fit = python_fit(MODEL, profile)
    assert isinstance(fit, Fit), str(fit)
    return fit


def test_there_are_multi_node_profiles() -> None:
    assert MULTI_NODE == ["h100-80gb-2x8", "h200-141gb-2x8"]


@pytest.mark.parametrize("profile", MULTI_NODE)
def test_without_leaderworkerset_the_chart_refuses(profile: str) -> None:
    result = run_preview_on((), MODEL, PROFILE=profile)
    assert isinstance(result, PreviewError)
    assert (
        f"profile {profile} spans 2 nodes, which the chart runs as a LeaderWorkerSet, but this "
        "cluster does not serve leaderworkerset.x-k8s.io/v1 LeaderWorkerSet" in str(result)
    )


@pytest.mark.parametrize("profile", MULTI_NODE)
def test_a_group_of_one_leader_and_workers_replaces_the_deployment(profile: str) -> None:
    result = rendered(profile)
    assert not of_kind(result, "Deployment")
    spec = group(result)["spec"]
    assert spec["startupPolicy"] == "LeaderCreated"
    template = spec["leaderWorkerTemplate"]
    assert template["size"] == fit_of(profile).nodes == 2
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    (leader,) = template["leaderTemplate"]["spec"]["containers"]
    (worker,) = template["workerTemplate"]["spec"]["containers"]
    assert leader["args"] == ["serve", "--config", "/etc/zarf-vllm/config.yaml"]
    assert worker["args"] == [
        "worker",
        "--config",
        "/etc/zarf-vllm/config.yaml",
        "--node-rank=$(LWS_WORKER_INDEX)",
        "--master-addr=$(LWS_LEADER_ADDRESS)",
    ]
    assert {p["name"] for p in leader["ports"]} == {"grpc", "metrics", "openai"}
    assert "startupProbe" in leader and "readinessProbe" in leader
    # The workers serve no API: no ports, no gRPC probes.
    assert not {"ports", "startupProbe", "readinessProbe", "livenessProbe"} & set(worker)
    leader_env = {e["name"]: e for e in leader["env"]}
    assert leader_env["BACKEND_ENGINE__MASTER_ADDR"]["valueFrom"]["fieldRef"] == {
        "fieldPath": "status.podIP"
    }
    worker_env = {e["name"]: e.get("value") for e in worker["env"]}
    assert worker_env["NCCL_SOCKET_IFNAME"] == worker_env["GLOO_SOCKET_IFNAME"] == "eth0"
    assert "BACKEND_ENGINE__MASTER_ADDR" not in worker_env
    assert_valid(result)


@pytest.mark.parametrize("profile", MULTI_NODE)
def test_every_pod_of_the_group_gets_one_nodes_share_of_the_fit(profile: str) -> None:
    fit = fit_of(profile)
    result = rendered(profile)
    template = group(result)["spec"]["leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        pod = template[role]["spec"]
        (container,) = pod["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert requests["nvidia.com/gpu"] == limits["nvidia.com/gpu"] == fit.gpus == 8
        assert requests["memory"] == limits["memory"] == f"{fit.host_memory_gib}Gi"
        (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{fit.shm_gib}Gi"}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    engine = config_of(result)["engine"]
    assert (engine["tensor_parallel_size"], engine["pipeline_parallel_size"]) == (8, 2)
    assert engine["nnodes"] == 2 and engine["max_model_len"] == fit.max_model_len


def test_the_services_select_the_leader_only() -> None:
    result = rendered("h100-80gb-2x8", HEADLESS_SERVICE="true")
    services = of_kind(result, "Service")
    assert len(services) == 2
    for service in services:
        assert LEADER_ONLY.items() <= service["spec"]["selector"].items()
    single = run_preview_on((LWS_API,), MODEL, PROFILE="h200-141gb-x8")
    assert isinstance(single, Preview)
    (service,) = of_kind(single, "Service")
    assert "leaderworkerset.sigs.k8s.io/worker-index" not in service["spec"]["selector"]
    assert of_kind(single, "Deployment") and not of_kind(single, "LeaderWorkerSet")


def test_workers_may_resolve_their_leaders_name() -> None:
    (policy,) = of_kind(rendered("h100-80gb-2x8"), "NetworkPolicy")
    dns = [
        rule
        for rule in policy["spec"]["egress"]
        if {"port": 53, "protocol": "UDP"} in rule.get("ports", [])
    ]
    assert dns, policy["spec"]["egress"]


def test_keda_scales_whole_groups() -> None:
    result = rendered("h100-80gb-2x8", (LWS_API, KEDA), MAX_REPLICAS="3")
    (scaled,) = of_kind(result, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "name": NAME,
    }
    assert "replicas" not in group(result)["spec"]  # KEDA owns the count
    assert_valid(result)


def test_405b_needs_two_nodes_of_80_gb_gpus_and_gets_its_whole_context() -> None:
    one_node = python_fit(MODEL, "h100-80gb-x8")
    assert not isinstance(one_node, Fit)
    assert "does not fit profile h100-80gb-x8" in str(one_node)
    fit = fit_of("h100-80gb-2x8")
    assert (fit.tensor_parallel_size, fit.pipeline_parallel_size) == (8, 2)
    assert fit.max_model_len == 131072
    assert fit.kv_capacity_tokens is not None and fit.kv_capacity_tokens > 2 * 131072


def test_embedding_models_are_refused_across_nodes() -> None:
    result = run_preview_on((LWS_API,), "all-minilm-l6-v2", PROFILE="h100-80gb-2x8")
    assert isinstance(result, PreviewError)
    assert "which vLLM does not run with pipeline parallelism" in str(result)
    assert str(result) == str(python_fit("all-minilm-l6-v2", "h100-80gb-2x8"))
