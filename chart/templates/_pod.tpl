{{/*
The pod that serves the model (dict "root" . "fit" $fit "role" ROLE): the Deployment's
(role single), and a LeaderWorkerSet group's leader (`serve`, the gRPC API and the engine) and
workers (`worker`, the other nodes' ranks). All three get the fit's whole node: GPUs, memory,
/dev/shm.
*/}}
{{- define "zarf-vllm.podSpec" -}}
{{- $root := .root -}}{{- $fit := .fit -}}{{- $role := .role -}}
{{- $where := include "zarf-vllm.scheduling" $root | fromJson -}}
{{- $gpus := int64 $fit.gpus -}}
{{- $grace := include "zarf-vllm.terminationGrace" $root | int64 -}}
{{- $openai := and (ne $role "worker") (include "zarf-vllm.openai" $root) -}}
{{- $tls := include "zarf-vllm.tls" $root -}}
{{- $probePort := include "zarf-vllm.probePort" $root | int64 -}}
{{- $apiKeySecret := "" -}}
{{- if $openai -}}{{- $apiKeySecret = toString $root.Values.openai.apiKeySecret -}}{{- end -}}
automountServiceAccountToken: false
enableServiceLinks: false
# The backend drains calls in flight for limits.drain_timeout_s after SIGTERM, then stops
# the engine; the margin covers that shutdown.
terminationGracePeriodSeconds: {{ $grace }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- with $where.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $where.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $where.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $root.Values.affinity }}
affinity:
  {{- toYaml $root.Values.affinity | nindent 2 }}
{{- else if gt $gpus 0 }}
affinity:
  nodeAffinity:
    # Where GPU Feature Discovery labels the nodes, prefer GPUs with the profile's memory;
    # without it the preference is void and the GPU request alone places the pod.
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 50
        preference:
          matchExpressions:
            - key: nvidia.com/gpu.memory
              operator: Gt
              values:
                - {{ sub (int64 $fit.gpuMemoryMib) 1 | quote }}
{{- end }}
{{- with and (eq $role "single") (include "zarf-vllm.topologySpread" $root) }}
topologySpreadConstraints:
  {{- . | nindent 2 }}
{{- end }}
containers:
  - name: backend
    image: {{ printf "%s:%s" $root.Values.image.repository $root.Values.image.tag | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    # The image's entrypoint is the backend's CLI (python -m zarf_vllm.backend, under tini).
    args:
      {{- if eq $role "worker" }}
      # A node of the leader's engine (`backend worker`): its ranks join the leader's
      # torch.distributed group; LeaderWorkerSet sets both variables in every pod.
      - worker
      - --config
      - /etc/zarf-vllm/config.yaml
      - --node-rank=$(LWS_WORKER_INDEX)
      - --master-addr=$(LWS_LEADER_ADDRESS)
      {{- else }}
      - serve
      - --config
      - /etc/zarf-vllm/config.yaml
      {{- end }}
    {{- if ne $role "worker" }}
    ports:
      {{- /* the Service's ports, under the names its targetPorts use */}}
      {{- range include "zarf-vllm.servicePorts" $root | fromJsonArray }}
      - name: {{ .name }}
        containerPort: {{ int .port }}
        protocol: TCP
      {{- end }}
      {{- if $tls }}
      # Plaintext grpc.health.v1.Health only, for the probes (not in the Service).
      - name: health
        containerPort: {{ include "zarf-vllm.healthPort" $root }}
        protocol: TCP
      {{- end }}
    {{- end }}
    # The image sets HOME and every cache under the writable /tmp; the server forces
    # offline mode itself (zarf_vllm.backend.offline). Only what the fit decides is here,
    # and the OpenAI API's key, from its Secret.
    {{- if or (eq $gpus 0) (ne $role "single") $apiKeySecret }}
    env:
    {{- end }}
    {{- if eq $gpus 0 }}
      # vLLM-CPU: no pinning to host cores the pod's CPU quota does not own, and one
      # OpenMP thread per core the pod may use, shared out among its engines (data
      # parallel: each engine's worker reads OMP_NUM_THREADS).
      - name: VLLM_CPU_OMP_THREADS_BIND
        value: nobind
      - name: OMP_NUM_THREADS
        value: {{ div (int64 $fit.hostCpu) (int64 $fit.dataParallelSize) | quote }}
    {{- else if ne $role "single" }}
      # vLLM advertises this address for its message queues between the nodes' ranks.
      - name: VLLM_HOST_IP
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
      {{- if eq $role "leader" }}
      # The leader is the rendezvous: its first rank holds the torch.distributed store.
      - name: BACKEND_ENGINE__MASTER_ADDR
        valueFrom:
          fieldRef:
            fieldPath: status.podIP
      {{- end }}
      {{- range $name, $value := $root.Values.multiNode.env }}
      - name: {{ $name }}
        value: {{ $value | toString | quote }}
      {{- end }}
    {{- end }}
    {{- if $apiKeySecret }}
      # config.py's openai.api_key (BACKEND_ prefix, __ between levels).
      - name: BACKEND_OPENAI__API_KEY
        valueFrom:
          secretKeyRef:
            name: {{ $apiKeySecret }}
            key: api-key
    {{- end }}
    resources:
      requests:
        cpu: {{ $fit.hostCpu | int64 | quote }}
        memory: {{ printf "%dGi" (int64 $fit.hostMemoryGib) }}
        {{- if gt $gpus 0 }}
        nvidia.com/gpu: {{ $gpus }}
        {{- end }}
      limits:
        memory: {{ printf "%dGi" (int64 $fit.hostMemoryGib) }}
        {{- if gt $gpus 0 }}
        nvidia.com/gpu: {{ $gpus }}
        {{- else }}
        cpu: {{ $fit.hostCpu | int64 | quote }}
        {{- end }}
    securityContext:
      runAsNonRoot: true
      runAsUser: 65532
      runAsGroup: 65532
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      privileged: false
      capabilities:
        drop:
          - ALL
      seccompProfile:
        type: RuntimeDefault
    {{- if ne $role "worker" }}
    # Loading takes minutes: the startup probe's budget grows with the weights' size;
    # liveness and readiness start once it passes. The backend reports SERVING only
    # after the engine is up and warmed up. kubelet's gRPC probe cannot speak TLS: with
    # TLS_SECRET they call the plaintext health-only port (backend/health_port.py).
    startupProbe:
      grpc:
        port: {{ $probePort }}
        service: ""
      periodSeconds: {{ $root.Values.constants.probePeriodSeconds }}
      timeoutSeconds: 5
      failureThreshold: {{ $root.Values.startupFailureThreshold }}
    readinessProbe:
      grpc:
        port: {{ $probePort }}
        service: ""
      periodSeconds: 10
      timeoutSeconds: 5
      failureThreshold: 3
    livenessProbe:
      grpc:
        port: {{ $probePort }}
        service: ""
      periodSeconds: 20
      timeoutSeconds: 10
      failureThreshold: 3
    {{- end }}
    volumeMounts:
      - name: config
        mountPath: /etc/zarf-vllm
        readOnly: true
      - name: tmp
        mountPath: /tmp
      {{- if $tls }}
      - name: tls
        mountPath: {{ include "zarf-vllm.tlsDir" $root }}
        readOnly: true
      {{- end }}
      {{- if gt (int64 $fit.shmGib) 0 }}
      - name: dshm
        mountPath: /dev/shm
      {{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "zarf-vllm.fullname" $root }}-config
  - name: tmp
    emptyDir:
      sizeLimit: {{ $root.Values.tmpSizeLimit }}
  {{- if $tls }}
  # tls.crt, tls.key, ca.crt; readable by the backend's group only (fsGroup 65532). The
  # backend reads them at start-up: a renewed certificate takes effect when the pod restarts.
  - name: tls
    secret:
      secretName: {{ $root.Values.tls.secret }}
      defaultMode: 0440
  {{- end }}
  {{- if gt (int64 $fit.shmGib) 0 }}
  # NCCL and vLLM's worker queues between tensor-parallel ranks; memory-backed, so it is
  # part of the pod's memory request.
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ printf "%dGi" (int64 $fit.shmGib) }}
  {{- end }}
{{- end -}}
