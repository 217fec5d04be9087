{{/*
Scale-out: how many pods, who owns that count, and how updates replace them. Every pod has the
profile's full sizing (its own GPUs); nothing here changes what one pod gets.
*/}}

{{/*
"true" when a KEDA ScaledObject owns the replica count: SCALED_OBJECT=true, or `auto` on a
cluster that serves keda.sh/v1alpha1 with room to scale (MAX_REPLICAS above MIN_REPLICAS; with
nothing to scale, a ScaledObject would only take the count away from REPLICAS).
*/}}
{{- define "zarf-vllm.scaledObject" -}}
{{- $a := .Values.autoscaling -}}
{{- $mode := toString $a.scaledObject -}}
{{- $min := int64 $a.minReplicas -}}
{{- $max := int64 $a.maxReplicas -}}
{{- $served := .Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject" -}}
{{- if and (ne $mode "false") (gt $min $max) -}}
{{- fail (printf "MIN_REPLICAS (%d) is above MAX_REPLICAS (%d): set MAX_REPLICAS to at least MIN_REPLICAS, or SCALED_OBJECT=false" $min $max) -}}
{{- end -}}
{{- if eq $mode "true" -}}
{{- if not $served -}}
{{- fail "SCALED_OBJECT=true, but this cluster does not serve keda.sh/v1alpha1 ScaledObject: install KEDA first, or deploy with SCALED_OBJECT=auto (scale with KEDA where it is installed) or false (a fixed REPLICAS)" -}}
{{- end -}}
{{- if eq $min $max -}}
{{- fail (printf "SCALED_OBJECT=true with MIN_REPLICAS = MAX_REPLICAS = %d leaves nothing to scale: raise MAX_REPLICAS, or set SCALED_OBJECT=false and REPLICAS=%d" $min $min) -}}
{{- end -}}
true
{{- else if and (eq $mode "auto") $served (lt $min $max) -}}
true
{{- end -}}
{{- end -}}

{{/*
Who sets the count ("owner": scaledObject, chart, or other: REPLICAS empty, an HPA of the
user's), the fewest pods there are meant to be, and whether there may be more than one.
*/}}
{{- define "zarf-vllm.podRange" -}}
{{- $replicas := toString .Values.replicas -}}
{{- if include "zarf-vllm.scaledObject" . -}}
{{- $a := .Values.autoscaling -}}
{{- dict "owner" "scaledObject" "min" (int64 $a.minReplicas) "many" (gt (int64 $a.maxReplicas) 1) | toJson -}}
{{- else if eq $replicas "" -}}
{{- dict "owner" "other" "min" 1 "many" true | toJson -}}
{{- else -}}
{{- dict "owner" "chart" "min" (int64 $replicas) "many" (gt (int64 $replicas) 1) | toJson -}}
{{- end -}}
{{- end -}}

{{/* The pod's termination grace: the backend's drain time after SIGTERM plus the margin of
the engine's shutdown. The Deployment and the ScaledObject's scale-down pace read it here. */}}
{{- define "zarf-vllm.terminationGrace" -}}
{{- add (int64 (ceil .Values.backendConfig.limits.drain_timeout_s)) .Values.constants.drainMarginSeconds -}}
{{- end -}}

{{/*
The Deployment's update strategy (dict "root" . "gpus" N). A new pod before an old one stops
(surge) needs room for one more pod: on GPU nodes a spare set of GPUs, which most clusters do not
hold, so GPU profiles only surge with ROLLOUT_SURGE=true; the cpu profile does by default
(`auto`). Without surge, one pod of a fixed count of one is simply recreated; with more pods
(or a ScaledObject, which may add some), they are replaced one at a time so the others serve.
*/}}
{{- define "zarf-vllm.strategy" -}}
{{- $root := .root -}}
{{- $mode := toString $root.Values.rolloutSurge -}}
{{- $range := include "zarf-vllm.podRange" $root | fromJson -}}
{{- if or (eq $mode "true") (and (eq $mode "auto") (eq (int64 .gpus) 0)) -}}
{{- dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" 1 "maxUnavailable" 0) | toJson -}}
{{- else if not $range.many -}}
{{- dict "type" "Recreate" | toJson -}}
{{- else -}}
{{- dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" 0 "maxUnavailable" 1) | toJson -}}
{{- end -}}
{{- end -}}

{{/*
Spread over nodes when there can be more than one pod. ScheduleAnyway (a preference), not
DoNotSchedule: a GPU pod is already placed by where free GPUs are, and a hard spread would leave
a replica Pending while a node that hosts one has idle GPUs (eight one-GPU replicas on one
eight-GPU node is a normal layout), or count nodes without GPUs as domains. matchLabelKeys keeps
the old and new ReplicaSets of an update from being counted together.
*/}}
{{- define "zarf-vllm.topologySpread" -}}
{{- $range := include "zarf-vllm.podRange" . | fromJson -}}
{{- if $range.many -}}
{{- $selector := include "zarf-vllm.selectorLabels" . | fromYaml -}}
{{- list (dict
  "maxSkew" 1
  "topologyKey" "kubernetes.io/hostname"
  "whenUnsatisfiable" .Values.topologySpread.whenUnsatisfiable
  "labelSelector" (dict "matchLabels" $selector)
  "matchLabelKeys" (list "pod-template-hash")) | toYaml -}}
{{- end -}}
{{- end -}}

{{/* The series of this release in Prometheus: its namespace, and the job the ServiceMonitor
(or the UDS Package's) names after the Service that exposes the metrics port. */}}
{{- define "zarf-vllm.promSelector" -}}
{{- printf "namespace=%q,job=%q" .Release.Namespace (include "zarf-vllm.fullname" .) -}}
{{- end -}}

{{/* PROMETHEUS_ADDRESS, else the operator's prometheus-operated Service in the monitoring
namespace (what UDS Core and kube-prometheus-stack run). */}}
{{- define "zarf-vllm.prometheusAddress" -}}
{{- .Values.autoscaling.prometheusAddress | default (printf "http://prometheus-operated.%s.svc.%s:9090" .Values.monitoringNamespace .Values.clusterDomain) -}}
{{- end -}}

{{/* PROMETHEUS_RULE: "true", "false", or "auto" (when the cluster has the API); `true` on a
cluster without it is refused, since the object could not be applied. */}}
{{- define "zarf-vllm.prometheusRule" -}}
{{- $mode := toString .Values.prometheusRule -}}
{{- $served := .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule" -}}
{{- if and (eq $mode "true") (not $served) -}}
{{- fail "PROMETHEUS_RULE=true, but this cluster does not serve monitoring.coreos.com/v1 PrometheusRule: install the Prometheus operator (UDS Core or kube-prometheus-stack) first, or deploy with PROMETHEUS_RULE=auto or false" -}}
{{- end -}}
{{- if and (ne $mode "false") $served -}}
true
{{- end -}}
{{- end -}}

{{/* INFERENCE_POOL: "true", "false", or "auto" (when the cluster serves the InferencePool API
and ENDPOINT_PICKER names a picker); `true` is refused where the pool could not work. */}}
{{- define "zarf-vllm.inferencePool" -}}
{{- $mode := toString .Values.inferencePool.enabled -}}
{{- $served := .Capabilities.APIVersions.Has "inference.networking.k8s.io/v1/InferencePool" -}}
{{- $picker := toString .Values.inferencePool.endpointPicker -}}
{{- $openai := include "zarf-vllm.openai" . -}}
{{- if eq $mode "true" -}}
{{- if not $served -}}
{{- fail "INFERENCE_POOL=true, but this cluster does not serve inference.networking.k8s.io/v1 InferencePool: install the Gateway API Inference Extension's CRDs first, or deploy with INFERENCE_POOL=auto or false" -}}
{{- end -}}
{{- if eq $picker "" -}}
{{- fail "INFERENCE_POOL=true needs ENDPOINT_PICKER, the endpoint picker's Service (service[:port]) in this namespace: deploy one (llm-d's or the Inference Extension's) and name it, or set INFERENCE_POOL=false" -}}
{{- end -}}
{{- if not $openai -}}
{{- fail "INFERENCE_POOL=true routes the OpenAI API, which OPENAI_API=false turns off: set OPENAI_API=true, or INFERENCE_POOL=false" -}}
{{- end -}}
true
{{- else if and (eq $mode "auto") $served (ne $picker "") $openai -}}
true
{{- end -}}
{{- end -}}
