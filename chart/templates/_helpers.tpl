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

{{/* The model's gRPC port and the metrics port: the backend's server.port and
server.metrics_port defaults (zarf_vllm.backend.config.ServerSettings), which the config below
sets. Every template names them through these. */}}
{{- define "zarf-vllm.grpcPort" -}}
50051
{{- end -}}

{{- define "zarf-vllm.metricsPort" -}}
9090
{{- end -}}

{{/* The LoRA adapters' gRPC ports, [{name, port, portName}] as JSON: the model's port
+ 1 + the adapter's index, as zarf_vllm.backend.adapters.adapter_port gives them. */}}
{{- define "zarf-vllm.adapterPorts" -}}
{{- $first := add1 (include "zarf-vllm.grpcPort" . | int) -}}
{{- $ports := list -}}
{{- range $index, $name := (.Values.model.adapters | default list) -}}
{{- $ports = append $ports (dict "name" $name "port" (add $first $index) "portName" (printf "lora-%d" $index)) -}}
{{- end -}}
{{- toJson $ports -}}
{{- end -}}

{{/* Every port the Service serves, in its order, [{name, port, appProtocol, adapter}] as JSON:
gRPC (the Service's first port, the one `zarf connect` tunnels to), one gRPC port per LoRA
adapter (adapter: its name), metrics, and the OpenAI API when it is on. The serving container
opens the same ports under the same names (plus, with TLS, the health port, which is not in the
Service), and NOTES.txt lists them: one list for the three. */}}
{{- define "zarf-vllm.servicePorts" -}}
{{- $ports := list (dict "name" "grpc" "port" (include "zarf-vllm.grpcPort" . | int) "appProtocol" "grpc") -}}
{{- range include "zarf-vllm.adapterPorts" . | fromJsonArray -}}
{{- $ports = append $ports (dict "name" .portName "port" (int .port) "appProtocol" "grpc" "adapter" .name) -}}
{{- end -}}
{{- $ports = append $ports (dict "name" "metrics" "port" (include "zarf-vllm.metricsPort" . | int) "appProtocol" "http") -}}
{{- if include "zarf-vllm.openai" . -}}
{{- $scheme := ternary "https" "http" (eq (include "zarf-vllm.tls" .) "true") -}}
{{- $ports = append $ports (dict "name" "openai" "port" (include "zarf-vllm.openaiPort" . | int) "appProtocol" $scheme) -}}
{{- end -}}
{{- toJson $ports -}}
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
The OpenAI-compatible HTTP API (OPENAI_API): "true" when it is served; its port (the backend's
server.openai_port, which the config below sets); and the namespaces that may open it
(OPENAI_NAMESPACES, else API_NAMESPACE) as a JSON list.
*/}}
{{- define "zarf-vllm.openai" -}}
{{- if eq (toString .Values.openai.enabled) "true" -}}
true
{{- end -}}
{{- end -}}

{{- define "zarf-vllm.openaiPort" -}}
8000
{{- end -}}

{{- define "zarf-vllm.openaiNamespaces" -}}
{{- $listed := splitList "," (toString .Values.openai.namespaces) | compact -}}
{{- ternary (list .Values.apiNamespace) $listed (empty $listed) | toJson -}}
{{- end -}}

{{/*
TLS on the gRPC and OpenAI ports (TLS_SECRET, TLS_CLIENT_CA; docs/tls.md): "true" when they serve
TLS with the Secret's files. Refused with a UDS Package: its Istio sidecars already encrypt and
authenticate every connection with mutual TLS, and a TLS port behind a sidecar would only be
opaque bytes to it (no gRPC/HTTP routing, metrics or authorization by request).
*/}}
{{- define "zarf-vllm.tls" -}}
{{- $secret := toString .Values.tls.secret -}}
{{- if and (eq (toString .Values.tls.clientCa) "true") (not $secret) -}}
{{- fail "TLS_CLIENT_CA=true needs TLS_SECRET: name the kubernetes.io/tls Secret whose ca.crt signs the client certificates, or set TLS_CLIENT_CA=false" -}}
{{- end -}}
{{- if and $secret (include "zarf-vllm.udsPackage" .) -}}
{{- fail (printf "TLS_SECRET=%s is refused with a UDS Package: UDS Core's Istio mesh already gives every connection mutual TLS. Leave TLS_SECRET empty, or set UDS_PACKAGE=false where no mesh runs (docs/tls.md)" $secret) -}}
{{- end -}}
{{- if $secret -}}
true
{{- end -}}
{{- end -}}

{{- /* Where the Secret is mounted: beside, not inside, the config's read-only volume. */ -}}
{{- define "zarf-vllm.tlsDir" -}}
/etc/zarf-vllm-tls
{{- end -}}

{{- /* With TLS, kubelet's gRPC probes (plaintext only) go to this health-only port: below the
       gRPC port, since the LoRA adapters' ports follow it (adapterPorts). */ -}}
{{- define "zarf-vllm.healthPort" -}}
50050
{{- end -}}

{{- define "zarf-vllm.probePort" -}}
{{- ternary (include "zarf-vllm.healthPort" .) (include "zarf-vllm.grpcPort" .) (eq (include "zarf-vllm.tls" .) "true") -}}
{{- end -}}

{{- /* config.py's tls section: the Secret's files (cert-manager's names) and the health port. */ -}}
{{- define "zarf-vllm.tlsConfig" -}}
{{- $tls := dict -}}
{{- if include "zarf-vllm.tls" . -}}
{{- $dir := include "zarf-vllm.tlsDir" . -}}
{{- $tls = dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) "health_port" (include "zarf-vllm.healthPort" . | int64) -}}
{{- if eq (toString .Values.tls.clientCa) "true" -}}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" $dir) -}}
{{- $_ := set $tls "require_client_cert" true -}}
{{- end -}}
{{- end -}}
{{- $tls | toJson -}}
{{- end -}}

{{/*
The backend's configuration file (src/zarf_vllm/backend/config.py): its sections, with only keys
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
{{- /* only another quantization than the checkpoint's own (fp8): vLLM reads a pre-quantized
       checkpoint's method from its config.json */ -}}
{{- if $fit.quantization }}{{ $_ := set $engine "quantization" $fit.quantization }}{{ end -}}
{{- if include "zarf-vllm.multiNode" . -}}
{{- /* every node reads the same file; the leader's address and each worker's rank come
       from the pod (_pod.tpl) */ -}}
{{- $_ := set $engine "pipeline_parallel_size" (int64 $fit.pipelineParallelSize) -}}
{{- $_ := set $engine "nnodes" (int64 $fit.nodes) -}}
{{- end -}}
{{- $openaiPort := ternary (include "zarf-vllm.openaiPort" . | int64) nil (eq (include "zarf-vllm.openai" .) "true") -}}
{{- /* the fit refused API_PROCESSES > 1 across nodes (sizing._check_variables) */ -}}
{{- $apiProcesses := int64 (get (include "zarf-vllm.overrides" . | fromJson) "apiProcesses" | default 1) -}}
{{- $server := merge (dict "port" (include "zarf-vllm.grpcPort" . | int64) "metrics_port" (include "zarf-vllm.metricsPort" . | int64) "openai_port" $openaiPort "log_level" .Values.logLevel "api_processes" $apiProcesses) $b.server -}}
{{- /* openai stays empty here: its api_key comes from a Secret, in the environment. */ -}}
{{- dict "model" $model "engine" $engine "sampling" $b.sampling "chat" $b.chat "limits" $b.limits "server" $server "openai" dict "tls" (include "zarf-vllm.tlsConfig" . | fromJson) | toYaml -}}
{{- end -}}

{{/*
"true" when the profile spans nodes (its fit's `nodes` > 1): the chart then runs a
LeaderWorkerSet group (leaderworkerset.yaml) instead of the Deployment. The cluster must serve
leaderworkerset.x-k8s.io/v1; without it the chart refuses, since no Deployment can hold a model
sized for several nodes.
*/}}
{{- define "zarf-vllm.multiNode" -}}
{{- $fit := include "zarf-vllm.fit" . | fromJson -}}
{{- if gt (int64 ($fit.nodes | default 1)) 1 -}}
{{- if not (.Capabilities.APIVersions.Has "leaderworkerset.x-k8s.io/v1/LeaderWorkerSet") -}}
{{- fail (printf "profile %s spans %d nodes, which the chart runs as a LeaderWorkerSet, but this cluster does not serve leaderworkerset.x-k8s.io/v1 LeaderWorkerSet: install LeaderWorkerSet (its controller and CRD) first, or choose a single-node profile" $fit.profile (int64 $fit.nodes)) -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* What the Services select: every pod, or in a LeaderWorkerSet group the leader only (the
workers serve no API). */}}
{{- define "zarf-vllm.servingSelector" -}}
{{ include "zarf-vllm.selectorLabels" . }}
{{- if include "zarf-vllm.multiNode" . }}
leaderworkerset.sigs.k8s.io/worker-index: "0"
{{- end }}
{{- end -}}
