"""Checks of the chart's objects against the schemas their API servers apply.

Kubernetes' own kinds: kubernetes-validate (the OpenAPI schemas of a Kubernetes version). The
custom kinds the chart renders have no schema here (no CRD is vendored): for KEDA's
ScaledObject and the Prometheus operator's PrometheusRule, the fields below are those their
CRDs document (keda.sh/v1alpha1 ScaledObject spec reference and its Prometheus scaler;
monitoring.coreos.com/v1 PrometheusRule API reference), each object closed to others, so a
misspelt or invented field fails. What KEDA makes of a ScaledObject, an autoscaling/v2 HPA,
is checked against Kubernetes' own schema.
"""

from __future__ import annotations

from functools import cache

import jsonschema
import kubernetes_validate
import yaml

from zarf_vllm.packaging.preview import Preview

KUBERNETES_VERSIONS = ("1.31.0", kubernetes_validate.latest_version() + ".0")
# Checked by their own tests (tests/chart/test_chart.py) from the fields UDS documents.
UNCHECKED_KINDS = {"Package", "ServiceMonitor"}


def _closed(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(required),
    }


_STRING = {"type": "string"}
_INT = {"type": "integer"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

# The Prometheus scaler's metadata: every value a string (KEDA's trigger metadata is a string map).
_PROMETHEUS_METADATA = _closed(
    {
        key: _STRING
        for key in (
            "serverAddress",
            "query",
            "threshold",
            "activationThreshold",
            "namespace",
            "customHeaders",
            "ignoreNullValues",
            "queryParameters",
            "unsafeSsl",
        )
    },
    ("serverAddress", "query", "threshold"),
)

SCALED_OBJECT_SPEC = _closed(
    {
        "scaleTargetRef": _closed(
            {
                "apiVersion": _STRING,
                "kind": _STRING,
                "name": _STRING,
                "envSourceContainerName": _STRING,
            },
            ("name",),
        ),
        "pollingInterval": _INT,
        "cooldownPeriod": _INT,
        "initialCooldownPeriod": _INT,
        "idleReplicaCount": _INT,
        "minReplicaCount": _INT,
        "maxReplicaCount": _INT,
        "fallback": {"type": "object"},
        "advanced": _closed(
            {
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                # Its `behavior` is the HPA's: checked as part of the HPA KEDA makes.
                "horizontalPodAutoscalerConfig": _closed(
                    {"name": _STRING, "behavior": {"type": "object"}}
                ),
                "scalingModifiers": {"type": "object"},
            }
        ),
        "triggers": {
            "type": "array",
            "minItems": 1,
            "items": _closed(
                {
                    "type": {"const": "prometheus"},
                    "name": _STRING,
                    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    "useCachedMetrics": {"type": "boolean"},
                    "authenticationRef": {"type": "object"},
                    "metadata": _PROMETHEUS_METADATA,
                },
                ("type", "metadata"),
            ),
        },
    },
    ("scaleTargetRef", "triggers"),
)

_RULE = _closed(
    {
        "alert": _STRING,
        "record": _STRING,
        "expr": _STRING,
        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d|w|y)$"},
        "keep_firing_for": _STRING,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    ("expr",),
)
PROMETHEUS_RULE_SPEC = _closed(
    {
        "groups": {
            "type": "array",
            "items": _closed(
                {
                    "name": _STRING,
                    "interval": _STRING,
                    "query_offset": _STRING,
                    "limit": _INT,
                    "partial_response_strategy": _STRING,
                    "labels": _STRING_MAP,
                    "rules": {"type": "array", "items": _RULE},
                },
                ("name",),
            ),
        }
    },
)

# LeaderWorkerSet's spec (leaderworkerset.x-k8s.io/v1, the API reference of
# kubernetes-sigs/lws: LeaderWorkerSetSpec, LeaderWorkerTemplate); its pod templates are
# checked as Pods by Kubernetes' own schema (leader_worker_pods).
_POD_TEMPLATE = _closed({"metadata": {"type": "object"}, "spec": {"type": "object"}}, ("spec",))
LEADER_WORKER_SET_SPEC = _closed(
    {
        "replicas": _INT,
        "startupPolicy": {"enum": ["LeaderCreated", "LeaderReady"]},
        "rolloutStrategy": {"type": "object"},
        "networkConfig": _closed({"subdomainPolicy": {"enum": ["Shared", "UniquePerReplica"]}}),
        "leaderWorkerTemplate": _closed(
            {
                "size": {"type": "integer", "minimum": 1},
                "restartPolicy": {"enum": ["RecreateGroupOnPodRestart", "None", "Default"]},
                "leaderTemplate": _POD_TEMPLATE,
                "workerTemplate": _POD_TEMPLATE,
                "subGroupPolicy": {"type": "object"},
                "volumeClaimTemplates": {"type": "array"},
            },
            ("workerTemplate",),
        ),
    },
    ("leaderWorkerTemplate",),
)


def leader_worker_pods(lws: dict) -> list[dict]:
    """A LeaderWorkerSet's leader and worker templates, as the Pods LWS makes of them."""
    template = lws["spec"]["leaderWorkerTemplate"]
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pod", **t["metadata"]},
            "spec": t["spec"],
        }
        for t in (template["leaderTemplate"], template["workerTemplate"])
    ]


# Gateway API Inference Extension v1 (its API reference: InferencePoolSpec, EndpointPickerRef).
INFERENCE_POOL_SPEC = _closed(
    {
        "selector": _closed({"matchLabels": _STRING_MAP}, ("matchLabels",)),
        "targetPorts": {
            "type": "array",
            "minItems": 1,
            "maxItems": 8,
            "items": _closed({"number": {"type": "integer", "minimum": 1, "maximum": 65535}}),
        },
        "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
        "endpointPickerRef": _closed(
            {
                "group": _STRING,
                "kind": _STRING,
                "name": _STRING,
                "port": _closed({"number": {"type": "integer", "minimum": 1, "maximum": 65535}}),
                "failureMode": {"enum": ["FailOpen", "FailClose"]},
            },
            ("name",),
        ),
    },
    ("selector", "targetPorts", "endpointPickerRef"),
)

CUSTOM_SPECS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): INFERENCE_POOL_SPEC,
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): LEADER_WORKER_SET_SPEC,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT_SPEC,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_SPEC,
}

# Limits the API server puts on an HPA's behavior (autoscaling/v2 validation), beyond the
# OpenAPI schema's types.
HPA_MAX_PERIOD_SECONDS = 1800
HPA_MAX_STABILIZATION_SECONDS = 3600


def hpa_of(scaled_object: dict) -> dict:
    """The autoscaling/v2 HorizontalPodAutoscaler KEDA creates for a ScaledObject: its target,
    bounds and behavior, with the trigger as an External metric."""
    spec = scaled_object["spec"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", **spec["scaleTargetRef"]}
    trigger = spec["triggers"][0]
    hpa_spec = {
        "scaleTargetRef": target,
        "minReplicas": spec.get("minReplicaCount", 0),
        "maxReplicas": spec.get("maxReplicaCount", 100),
        "metrics": [
            {
                "type": "External",
                "external": {
                    "metric": {"name": "s0-prometheus"},
                    "target": {
                        "type": trigger.get("metricType", "AverageValue"),
                        "averageValue": trigger["metadata"]["threshold"],
                    },
                },
            }
        ],
    }
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior:
        hpa_spec["behavior"] = behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"keda-hpa-{scaled_object['metadata']['name']}"},
        "spec": hpa_spec,
    }


def assert_hpa_limits(hpa: dict) -> None:
    for direction in hpa["spec"].get("behavior", {}).values():
        window = direction.get("stabilizationWindowSeconds", 0)
        assert 0 <= window <= HPA_MAX_STABILIZATION_SECONDS, window
        for policy in direction.get("policies", []):
            assert 0 < policy["periodSeconds"] <= HPA_MAX_PERIOD_SECONDS, policy
            assert policy["value"] > 0 and policy["type"] in ("Pods", "Percent")


@cache
def _validate(text: str, version: str) -> None:
    kubernetes_validate.validate(yaml.safe_load(text), version, strict=True)


def validate_kubernetes(obj: dict) -> None:
    for version in KUBERNETES_VERSIONS:
        _validate(yaml.safe_dump(obj, sort_keys=True), version)


def assert_valid(result: Preview) -> None:
    """Every rendered object: Kubernetes' kinds by their schemas, the custom kinds by their
    CRDs' documented fields (and a ScaledObject's HPA by Kubernetes' schema)."""
    for item in result.objects:
        obj = item.object
        key = (obj["apiVersion"], obj["kind"])
        if obj["kind"] in UNCHECKED_KINDS:
            continue
        if key in CUSTOM_SPECS:
            assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}, sorted(obj)
            jsonschema.validate(obj["spec"], CUSTOM_SPECS[key])
            if obj["kind"] == "LeaderWorkerSet":
                for pod in leader_worker_pods(obj):
                    validate_kubernetes(pod)
            if obj["kind"] == "ScaledObject":
                hpa = hpa_of(obj)
                validate_kubernetes(hpa)
                assert_hpa_limits(hpa)
            continue
        for version in KUBERNETES_VERSIONS:
            _validate(item.text, version)
