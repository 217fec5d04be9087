{{/* Names: every object is named after the release (Zarf's releaseName: the package NAME). */}}
{{- define "zarf-vllm.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "zarf-vllm.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "zarf-vllm.labels" -}}
{{ include "zarf-vllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: model-backend
app.kubernetes.io/part-of: leapfrogai
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
zarf-vllm/model: {{ toString (.Values.model.id | default "") | trunc 63 | quote }}
{{- end -}}

{{/* The name LeapfrogAI lists the model under. */}}
{{- define "zarf-vllm.servedName" -}}
{{- .Values.modelName | default .Values.model.id -}}
{{- end -}}

{{- define "zarf-vllm.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "zarf-vllm.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* UDS_PACKAGE / SERVICE_MONITOR: "true", "false", or "auto" (when the cluster has the API). */}}
{{- define "zarf-vllm.udsPackage" -}}
{{- $mode := toString .Values.udsPackage -}}
{{- if or (eq $mode "true") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "uds.dev/v1alpha1/Package")) -}}
true
{{- end -}}
{{- end -}}

{{- define "zarf-vllm.serviceMonitor" -}}
{{- $mode := toString .Values.serviceMonitor -}}
{{- if and (not (include "zarf-vllm.udsPackage" .)) (or (eq $mode "true") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor"))) -}}
true
{{- end -}}
{{- end -}}

{{/*
Where the pod may run: the profile's node selector, tolerations and runtime class, with
NODE_SELECTOR and TOLERATIONS added and RUNTIME_CLASS replacing ("none" drops it).
*/}}
{{- define "zarf-vllm.scheduling" -}}
{{- $p := get .Values.profiles (include "zarf-vllm.profileName" .) -}}
{{- $o := .Values.overrides | default dict -}}
{{- $nodeSelector := deepCopy ($p.scheduling.nodeSelector | default dict) -}}
{{- range $pair := splitList "," (toString ($o.nodeSelector | default "")) -}}
{{- if $pair -}}
{{- $kv := splitn "=" 2 $pair -}}
{{- $_ := set $nodeSelector $kv._0 $kv._1 -}}
{{- end -}}
{{- end -}}
{{- $tolerations := $p.scheduling.tolerations | default list -}}
{{- range $entry := splitList "," (toString ($o.tolerations | default "")) -}}
{{- if $entry -}}
{{- $keyEffect := splitn ":" 2 $entry -}}
{{- $kv := splitn "=" 2 $keyEffect._0 -}}
{{- $toleration := dict "key" $kv._0 "effect" $keyEffect._1 "operator" "Exists" -}}
{{- if $kv._1 -}}
{{- $_ := set $toleration "operator" "Equal" -}}
{{- $_ := set $toleration "value" $kv._1 -}}
{{- end -}}
{{- $tolerations = append $tolerations $toleration -}}
{{- end -}}
{{- end -}}
{{- $runtimeClass := $p.scheduling.runtimeClassName | default "" -}}
{{- $override := toString ($o.runtimeClass | default "") -}}
{{- if eq $override "none" }}{{ $runtimeClass = "" }}{{ else if $override }}{{ $runtimeClass = $override }}{{ end -}}
{{- dict "nodeSelector" $nodeSelector "tolerations" $tolerations "runtimeClassName" $runtimeClass | toJson -}}
{{- end -}}

{{/*
The backend's configuration file (src/zarf_vllm/backend/config.py): its six sections, with only keys
that config.py knows. The engine section comes from the sizing; sampling and chat only carry
what the values set, so the manifest's own defaults apply otherwise.
*/}}
{{- define "zarf-vllm.config" -}}
{{- $fit := include "zarf-vllm.fit" . | fromJson -}}
{{- $b := .Values.backendConfig -}}
{{- /* model.path and model.manifest come from the model image's environment (the image
       builder put the weights there); the chart does not name them a second time. */ -}}
{{- $model := dict "name" (.Values.modelName | default nil) "verify" $b.model.verify "task" $b.model.task -}}
{{- $engine := dict
  "dtype" $fit.dtype
  "max_model_len" (int64 $fit.maxModelLen)
  "tensor_parallel_size" (int64 $fit.tensorParallelSize)
  "data_parallel_size" (int64 $fit.dataParallelSize)
  "gpu_memory_utilization" (include "zarf-vllm.permille" $fit.utilPermille | float64)
  "max_num_seqs" (int64 $fit.maxNumSeqs)
  "max_num_batched_tokens" (int64 $fit.maxNumBatchedTokens)
  "enforce_eager" $fit.enforceEager
  "kv_cache_dtype" $fit.kvCacheDtype
  "cpu_kvcache_space_gib" (ternary (int64 $fit.cpuKvcacheGib) nil (eq (int64 $fit.gpus) 0)) -}}
{{- $server := merge (dict "port" 50051 "metrics_port" 9090 "log_level" .Values.logLevel) $b.server -}}
{{- dict "model" $model "engine" $engine "sampling" $b.sampling "chat" $b.chat "limits" $b.limits "server" $server | toYaml -}}
{{- end -}}
