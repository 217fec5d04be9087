"""The metric names the backend's metrics port really serves, read from the code that
registers them, and the names a PromQL expression queries.

Two sources share the port (zarf_vllm.backend.metrics): the backend's own collectors, read
from a fresh registry, and vLLM's, read from the calls in vllm/v1/metrics/loggers.py that
create them (parsed, not imported: the module needs a whole engine configuration to run).
Exposed names follow prometheus_client's rules: a counter gains `_total`, a histogram serves
`_bucket`, `_sum` and `_count`.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from zarf_vllm.backend.metrics import Metrics

# Series Prometheus itself writes for every target it scrapes.
PROMETHEUS_SERIES = {"up"}

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
# PrometheusStatLogger's class attributes for prometheus_client's Gauge, Counter, Histogram.
_VLLM_FACTORIES = {"_gauge_cls": "gauge", "_counter_cls": "counter", "_histogram_cls": "histogram"}


def exposed(name: str, kind: str) -> set[str]:
    base = name.removesuffix("_total") if kind == "counter" else name
    return {base + suffix for suffix in _SUFFIXES[kind]}


def backend_metrics() -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    return {n for family in registry.collect() for n in exposed(family.name, family.type)}


def vllm_loggers_file() -> Path:
    # The top-level package's spec: finding it imports nothing (a submodule's would import vLLM).
    spec = importlib.util.find_spec("vllm")
    assert spec is not None and spec.submodule_search_locations, "vLLM is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "loggers.py"


def vllm_metrics(path: Path | None = None) -> set[str]:
    """Every metric PrometheusStatLogger creates: its self._gauge_cls(name=...) calls."""
    tree = ast.parse((path or vllm_loggers_file()).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        kind = _VLLM_FACTORIES.get(node.func.attr)
        for keyword in node.keywords if kind else ():
            if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                names |= exposed(str(keyword.value.value), kind)
    return names


def served_metrics() -> set[str]:
    return backend_metrics() | vllm_metrics() | PROMETHEUS_SERIES


# PromQL words that are not series: binary operators, modifiers, and number literals' words.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def queried_metrics(expr: str) -> set[str]:
    """The series names an expression selects: identifiers that are not functions (followed
    by `(`), keywords, label names in matchers or groupings, or parts of numbers and durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in re.finditer(r"(?<![0-9.A-Za-z_:$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


def grafana_variable_metrics(query: str) -> set[str]:
    """The series of a Grafana variable query: label_values(SERIES, label) or a PromQL one."""
    found = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query)
    return queried_metrics(found.group(1) if found else query)


# --- what the chart queries ----------------------------------------------------------------


def dashboard_file() -> Path:
    from support.paths import CHART

    return CHART / "dashboards" / "zarf-vllm.json"


def _dashboard_queries(dashboard: dict) -> tuple[list[str], list[str]]:
    """The panels' expressions, and the query variables' queries."""
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    variables = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            variables.append(query["query"] if isinstance(query, dict) else query)
    return exprs, variables


def chart_queried_series() -> dict[str, set[str]]:
    """Every series the chart's queries ask for, by where: the dashboard's panels and
    variables, the PrometheusRule's alerts and the ScaledObject's trigger (rendered for a
    cluster with KEDA and the Prometheus operator)."""
    import json

    from support.profiles_fixtures import run_preview_on

    exprs, variables = _dashboard_queries(json.loads(dashboard_file().read_text()))
    result = run_preview_on(
        ("keda.sh/v1alpha1/ScaledObject", "monitoring.coreos.com/v1/PrometheusRule"),
        "smollm2-135m-instruct",
        PROFILE="l4-24gb",
        MAX_REPLICAS="3",
    )
    assert not isinstance(result, Exception), str(result)
    kinds = {i.object["kind"]: i.object for i in result.objects}
    rules = [r for g in kinds["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    trigger = kinds["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]
    return {
        "dashboard": set().union(*map(queried_metrics, exprs)),
        "dashboard variables": set().union(*map(grafana_variable_metrics, variables)),
        "alerts": set().union(*(queried_metrics(r["expr"]) for r in rules)),
        "ScaledObject": queried_metrics(trigger),
    }
