{{/*
The sizing helper: the profile PROFILE picks, with the override variables applied, checked
for fit and turned into engine values. It repeats src/zarf_vllm/model/sizing.py step by step, in
integers, with the constants that file wrote into .Values.sizing; tests/test_chart.py renders
every manifest x profile pair (and overrides) and checks that Python and this agree.

Use: {{ $fit := include "zarf-vllm.fit" . | fromJson }}. A refusal is a `fail`, which stops
Helm before anything is applied.
*/}}

{{- define "zarf-vllm.fit" -}}
{{- $v := .Values -}}
{{- if not $v.model.id -}}
{{- fail "these values name no model: render them with `scripts/render-values MANIFEST --out FILE` and pass the file to Helm (-f FILE); a Zarf package carries them" -}}
{{- end -}}
{{- $name := include "zarf-vllm.profileName" . -}}
{{- $p := get $v.profiles $name -}}
{{- $isCpu := and (hasKey $p.gpu "count") (eq (int64 $p.gpu.count) 0) -}}
{{- $needs := ternary "cpu" "cuda" $isCpu -}}
{{- if ne $needs $v.flavor -}}
{{- fail (printf "profile %s needs the %s flavor of this package, which was created with --flavor %s" $name $needs $v.flavor) -}}
{{- end -}}
{{- $args := dict "root" . "name" $name "p" $p "m" $v.model "c" $v.sizing "o" (include "zarf-vllm.overrides" . | fromJson) -}}
{{- if $isCpu -}}
{{- include "zarf-vllm.sizeCpu" $args -}}
{{- else -}}
{{- include "zarf-vllm.sizeGpu" $args -}}
{{- end -}}
{{- end -}}

{{/* The profile's name: PROFILE, else the package's default; unknown names fail. */}}
{{- define "zarf-vllm.profileName" -}}
{{- $v := .Values -}}
{{- $name := toString ($v.profile | default $v.defaultProfile | default "") -}}
{{- if not $name -}}
{{- fail (printf "PROFILE is not set: choose the hardware profile of your nodes, one of %s%s" (join ", " $v.profileNames) (include "zarf-vllm.alternatives" (dict "root" . "name" ""))) -}}
{{- end -}}
{{- if not (hasKey $v.profiles $name) -}}
{{- fail (printf "unknown PROFILE \"%s\": valid profiles are %s" $name (join ", " $v.profileNames)) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* The override variables that are set, parsed: integers, utilization in permille. */}}
{{- define "zarf-vllm.overrides" -}}
{{- $o := .Values.overrides | default dict -}}
{{- $parsed := dict -}}
{{- range $key := list "gpuCount" "gpuMemoryGib" "tensorParallelSize" "maxModelLen" "maxNumSeqs" "maxNumBatchedTokens" "cpuKvcacheGib" "hostCpu" "hostMemoryGib" -}}
{{- $text := toString (get $o $key | default "") -}}
{{- if $text -}}
{{- $_ := set $parsed $key (atoi $text) -}}
{{- end -}}
{{- end -}}
{{- $util := toString ($o.gpuMemoryUtilization | default "") -}}
{{- if $util -}}
{{- $_ := set $parsed "utilPermille" (atoi (trunc 3 (printf "%s00" (last (splitList "." $util))))) -}}
{{- end -}}
{{- $kv := toString ($o.kvCacheDtype | default "") -}}
{{- if $kv -}}
{{- $_ := set $parsed "kvCacheDtype" $kv -}}
{{- end -}}
{{- $parsed | toJson -}}
{{- end -}}

{{/* What a refusal for lack of room adds: the profiles that fit, the manifests that fit. */}}
{{- define "zarf-vllm.alternatives" -}}
{{- $v := .root.Values -}}
{{- if $v.fits -}}
{{- printf ". Profiles that fit %s without overrides: %s" $v.model.id (join ", " $v.fits) -}}
{{- else -}}
{{- printf ". No profile fits %s" $v.model.id -}}
{{- end -}}
{{- if .name -}}
{{- with (get $v.profiles .name).fitsManifests -}}
{{- printf ". Manifests that fit profile %s: %s" $.name (join ", " .) -}}
{{- end -}}
{{- end -}}
{{- print "." -}}
{{- end -}}

{{- define "zarf-vllm.refuseFit" -}}
{{- fail (printf "%s%s" .message (include "zarf-vllm.alternatives" .)) -}}
{{- end -}}

{{/* Bytes as GiB with one decimal, rounded down: sizing.gib. */}}
{{- define "zarf-vllm.gib" -}}
{{- $tenths := div (mul . 10) 1073741824 -}}
{{- printf "%d.%d" (div $tenths 10) (mod $tenths 10) -}}
{{- end -}}

{{/* Permille as gpu_memory_utilization is written: 920 -> 0.92 (sizing.permille). */}}
{{- define "zarf-vllm.permille" -}}
{{- regexReplaceAll "0+$" (printf "0.%03d" (int64 .)) "" -}}
{{- end -}}

{{/* The longest context the model, the class and the KV cache allow (sizing._auto_len). */}}
{{- define "zarf-vllm.autoLen" -}}
{{- $len := min (int64 .m.maxPositions) (int64 .p.engine.maxModelLen) -}}
{{- if ge (int64 .capacity) 0 -}}
{{- $len = min $len (int64 .capacity) -}}
{{- end -}}
{{- mul (div $len .c.blockSize) .c.blockSize -}}
{{- end -}}

{{/* Required context, max_num_seqs, max_num_batched_tokens (sizing._context_and_batch). */}}
{{- define "zarf-vllm.contextAndBatch" -}}
{{- $m := .m -}}{{- $o := .o -}}{{- $c := .c -}}
{{- if and (hasKey $o "maxModelLen") (gt (int64 $o.maxModelLen) (int64 $m.maxPositions)) -}}
{{- fail (printf "MAX_MODEL_LEN=%d exceeds the %d tokens %s was trained for (max_position_embeddings)" (int64 $o.maxModelLen) (int64 $m.maxPositions) $m.id) -}}
{{- end -}}
{{- $required := min (int64 $c.usableContext) (mul (div $m.maxPositions $c.blockSize) $c.blockSize) -}}
{{- if hasKey $o "maxModelLen" }}{{ $required = int64 $o.maxModelLen }}{{ end -}}
{{- $seqs := int64 .p.engine.maxNumSeqs -}}
{{- if hasKey $o "maxNumSeqs" }}{{ $seqs = int64 $o.maxNumSeqs }}{{ end -}}
{{- $batched := int64 .p.engine.maxNumBatchedTokens -}}
{{- if hasKey $o "maxNumBatchedTokens" }}{{ $batched = int64 $o.maxNumBatchedTokens }}{{ end -}}
{{- if eq $m.task "embed" -}}
{{- $length := 0 -}}
{{- if hasKey $o "maxModelLen" -}}
{{- $length = int64 $o.maxModelLen -}}
{{- else -}}
{{- $length = int64 (include "zarf-vllm.autoLen" (dict "m" $m "p" .p "c" $c "capacity" -1)) -}}
{{- end -}}
{{- if not (hasKey $o "maxNumBatchedTokens") }}{{ $batched = max $batched $length }}{{ end -}}
{{- if lt $batched $length -}}
{{- fail (printf "%s is an embedding model, which vLLM runs without chunked prefill: max_num_batched_tokens (%d) must be at least max_model_len (%d)" $m.id $batched $length) -}}
{{- end -}}
{{- end -}}
{{- if lt $batched $seqs -}}
{{- fail (printf "max_num_batched_tokens (%d) must be at least max_num_seqs (%d): vLLM refuses fewer (set MAX_NUM_BATCHED_TOKENS or MAX_NUM_SEQS)" $batched $seqs) -}}
{{- end -}}
{{- dict "required" $required "seqs" $seqs "batched" $batched | toJson -}}
{{- end -}}

{{/* "MAX_MODEL_LEN=n" or "a usable context of n tokens" (sizing._what_needs). */}}
{{- define "zarf-vllm.whatNeeds" -}}
{{- if hasKey .o "maxModelLen" -}}
{{- printf "MAX_MODEL_LEN=%d" (int64 .required) -}}
{{- else -}}
{{- printf "a usable context of %d tokens" (int64 .required) -}}
{{- end -}}
{{- end -}}

{{/* Host memory in GiB, refused where it cannot be had (sizing._host_memory). */}}
{{- define "zarf-vllm.hostMemory" -}}
{{- $m := .m -}}{{- $c := .c -}}
{{- $gib := int64 $c.gib -}}
{{- $need := div (add $m.weightBytes .runtime (mul (add .kvGib .shmGib) $gib) (sub $gib 1)) $gib -}}
{{- $parts := printf "%s GiB weights + %s GiB runtime" (include "zarf-vllm.gib" $m.weightBytes) (include "zarf-vllm.gib" .runtime) -}}
{{- if gt (int64 .kvGib) 0 }}{{ $parts = printf "%s + %d GiB KV cache" $parts (int64 .kvGib) }}{{ end -}}
{{- if gt (int64 .shmGib) 0 }}{{ $parts = printf "%s + %d GiB /dev/shm" $parts (int64 .shmGib) }}{{ end -}}
{{- if hasKey .o "hostMemoryGib" -}}
{{- if lt (int64 .o.hostMemoryGib) $need -}}
{{- include "zarf-vllm.refuseFit" (dict "root" .root "name" .name "message" (printf "HOST_MEMORY_GIB=%d is less than the %d GiB of host memory %s needs on profile %s (%s)" (int64 .o.hostMemoryGib) $need $m.id .name $parts)) -}}
{{- end -}}
{{- int64 .o.hostMemoryGib -}}
{{- else -}}
{{- if and (hasKey .p.host "memoryGib") (gt $need (int64 .p.host.memoryGib)) -}}
{{- include "zarf-vllm.refuseFit" (dict "root" .root "name" .name "message" (printf "%s needs %d GiB of host memory on profile %s (%s), more than the %d GiB a node of this profile gives one pod; set HOST_MEMORY_GIB if your nodes have more" $m.id $need .name $parts (int64 .p.host.memoryGib))) -}}
{{- end -}}
{{- $need -}}
{{- end -}}
{{- end -}}

{{/* The CPU profile (sizing._size_cpu). */}}
{{- define "zarf-vllm.sizeCpu" -}}
{{- $m := .m -}}{{- $o := .o -}}{{- $c := .c -}}{{- $p := .p -}}
{{- range $key, $variable := dict "1gpuCount" "GPU_COUNT" "2gpuMemoryGib" "GPU_MEMORY_GIB" "3tensorParallelSize" "TENSOR_PARALLEL_SIZE" "4utilPermille" "GPU_MEMORY_UTILIZATION" "5kvCacheDtype" "KV_CACHE_DTYPE" -}}
{{- if hasKey $o (substr 1 -1 $key) -}}
{{- fail (printf "%s does not apply to the cpu profile, which runs without GPUs" $variable) -}}
{{- end -}}
{{- end -}}
{{- if not (has $m.quantization $c.cpuQuantizations) -}}
{{- include "zarf-vllm.refuseFit" (dict "root" .root "name" .name "message" (printf "%s is %s-quantized, which vLLM-CPU does not run" $m.id $m.quantization)) -}}
{{- end -}}
{{- $cb := include "zarf-vllm.contextAndBatch" . | fromJson -}}
{{- $required := int64 $cb.required -}}
{{- $dtype := ternary "float32" "bfloat16" (eq $m.weightDtype "float32") -}}
{{- $kvBytes := 0 -}}
{{- if ne $m.task "embed" -}}
{{- $kvBytes = mul 2 $m.layers $m.kvHeads $m.headDim (ternary 4 2 (eq $dtype "float32")) -}}
{{- end -}}
{{- $kvGib := int64 $p.engine.cpuKvcacheGib -}}
{{- if hasKey $o "cpuKvcacheGib" }}{{ $kvGib = int64 $o.cpuKvcacheGib }}{{ end -}}
{{- $capacity := -1 -}}
{{- if gt $kvBytes 0 -}}
{{- $capacity = div (mul $kvGib $c.gib) $kvBytes -}}
{{- if lt $capacity $required -}}
{{- include "zarf-vllm.refuseFit" (dict "root" .root "name" .name "message" (printf "%s does not fit profile %s: a %d GiB KV cache (CPU_KVCACHE_GIB) holds %d tokens at %d bytes per token, and %s needs %s GiB" $m.id .name $kvGib $capacity $kvBytes (include "zarf-vllm.whatNeeds" (dict "o" $o "required" $required)) (include "zarf-vllm.gib" (mul $required $kvBytes)))) -}}
{{- end -}}
{{- end -}}
{{- $activation := add (mul $cb.batched $m.hiddenSize $c.activationBytesPerTokenPerHidden) (mul $cb.seqs $m.vocabSize $c.samplerBytesPerSeqPerVocab) -}}
{{- $runtime := add $c.hostRuntimeBytes $activation -}}
{{- $hostMemory := include "zarf-vllm.hostMemory" (dict "root" .root "name" .name "m" $m "c" $c "p" $p "o" $o "runtime" $runtime "kvGib" $kvGib "shmGib" (int64 $c.cpuShmGib)) -}}
{{- $maxModelLen := 0 -}}
{{- if hasKey $o "maxModelLen" -}}
{{- $maxModelLen = int64 $o.maxModelLen -}}
{{- else -}}
{{- $maxModelLen = include "zarf-vllm.autoLen" (dict "m" $m "p" $p "c" $c "capacity" $capacity) -}}
{{- end -}}
{{- $hostCpu := int64 $p.host.cpu -}}
{{- if hasKey $o "hostCpu" }}{{ $hostCpu = int64 $o.hostCpu }}{{ end -}}
{{- dict
  "profile" .name "model" $m.id "gpus" 0 "gpuMemoryMib" 0 "tensorParallelSize" 1 "dtype" $dtype
  "kvCacheDtype" "auto" "utilPermille" (int64 $p.engine.gpuMemoryUtilizationPermille)
  "maxModelLen" (int64 $maxModelLen) "maxNumSeqs" $cb.seqs "maxNumBatchedTokens" $cb.batched
  "enforceEager" $p.engine.enforceEager "cpuKvcacheGib" $kvGib "kvBytesPerToken" $kvBytes
  "kvCapacityTokens" $capacity "shmGib" (int64 $c.cpuShmGib) "hostMemoryGib" (int64 $hostMemory)
  "hostCpu" $hostCpu "startupSeconds" (add $c.startupBaseSeconds (div $m.weightBytes $c.loadBytesPerSecond))
  | toJson -}}
{{- end -}}

{{/* GPU profiles (sizing._size_gpu). */}}
{{- define "zarf-vllm.sizeGpu" -}}
{{- $m := .m -}}{{- $o := .o -}}{{- $c := .c -}}{{- $p := .p -}}{{- $name := .name -}}
{{- if hasKey $o "cpuKvcacheGib" -}}
{{- fail (printf "CPU_KVCACHE_GIB applies only to the cpu profile; profile %s keeps its KV cache in GPU memory" $name) -}}
{{- end -}}
{{- $gpuCount := -1 -}}
{{- if hasKey $o "gpuCount" }}{{ $gpuCount = int64 $o.gpuCount }}{{ else if hasKey $p.gpu "count" }}{{ $gpuCount = int64 $p.gpu.count }}{{ end -}}
{{- $memoryMib := -1 -}}
{{- if hasKey $o "gpuMemoryGib" }}{{ $memoryMib = mul $o.gpuMemoryGib 1024 }}{{ else if hasKey $p.gpu "memoryMib" }}{{ $memoryMib = int64 $p.gpu.memoryMib }}{{ end -}}
{{- if or (lt $gpuCount 0) (lt $memoryMib 0) -}}
{{- fail (printf "profile %s needs GPU_COUNT and GPU_MEMORY_GIB: the GPUs one node gives the model and the memory of each in GiB (e.g. GPU_COUNT=2, GPU_MEMORY_GIB=48)" $name) -}}
{{- end -}}
{{- $cb := include "zarf-vllm.contextAndBatch" . | fromJson -}}
{{- $required := int64 $cb.required -}}
{{- $util := int64 $p.engine.gpuMemoryUtilizationPermille -}}
{{- if hasKey $o "utilPermille" }}{{ $util = int64 $o.utilPermille }}{{ end -}}
{{- $kvDtype := "auto" -}}
{{- if hasKey $o "kvCacheDtype" }}{{ $kvDtype = $o.kvCacheDtype }}{{ end -}}
{{- $kvBytes := 0 -}}
{{- if ne $m.task "embed" -}}
{{- $kvBytes = mul 2 $m.layers $m.kvHeads $m.headDim (ternary 1 2 (eq $kvDtype "fp8")) -}}
{{- end -}}
{{- $activation := add (mul $cb.batched $m.hiddenSize $c.activationBytesPerTokenPerHidden) (mul $cb.seqs $m.vocabSize $c.samplerBytesPerSeqPerVocab) -}}
{{- $budget := div (mul $memoryMib $c.mib $util) 1000 -}}
{{- $candidates := list -}}
{{- range $t := untilStep 1 (int (add $gpuCount 1)) 1 -}}
{{- if and (eq (mod $m.attentionHeads $t) 0) (eq (mod $m.kvHeads $t) 0) (eq (mod $gpuCount $t) 0) -}}
{{- $candidates = append $candidates $t -}}
{{- end -}}
{{- end -}}
{{- /* room: bytes per GPU left for the KV cache; capacity: tokens the whole cache holds */ -}}
{{- $rooms := dict -}}
{{- $capacities := dict -}}
{{- range $t := $candidates -}}
{{- $reserve := int64 $c.gpuReserveBytes -}}
{{- if gt $t 1 }}{{ $reserve = add $reserve $c.tpReserveBytes }}{{ end -}}
{{- $room := sub (sub (sub $budget (div (add $m.weightBytes (sub $t 1)) $t)) $activation) $reserve -}}
{{- $capacity := 0 -}}
{{- if and (gt $room 0) (gt $kvBytes 0) }}{{ $capacity = div (mul $room $t) $kvBytes }}{{ end -}}
{{- $_ := set $rooms (toString $t) $room -}}
{{- $_ := set $capacities (toString $t) $capacity -}}
{{- end -}}
{{- $tp := 0 -}}
{{- if hasKey $o "tensorParallelSize" -}}
{{- $tp = int $o.tensorParallelSize -}}
{{- if not (has $tp $candidates) -}}
{{- fail (printf "TENSOR_PARALLEL_SIZE=%d does not suit %s on %d GPU(s): it must divide the attention heads (%d), the KV heads (%d) and the GPU count (%d); valid sizes: %s" $tp $m.id $gpuCount (int64 $m.attentionHeads) (int64 $m.kvHeads) $gpuCount (join ", " $candidates)) -}}
{{- end -}}
{{- else -}}
{{- /* The smallest size with a useful cache; failing that, the largest the heads allow. */ -}}
{{- $target := $required -}}
{{- if not (hasKey $o "maxModelLen") }}{{ $target = include "zarf-vllm.autoLen" (dict "m" $m "p" $p "c" $c "capacity" -1) }}{{ end -}}
{{- $useful := mul $c.usefulKvSequences $target -}}
{{- range $t := $candidates -}}
{{- if eq $tp 0 -}}
{{- $room := get $rooms (toString $t) -}}
{{- $capacity := get $capacities (toString $t) -}}
{{- if or (and (eq $kvBytes 0) (ge $room 0)) (and (gt $kvBytes 0) (ge $capacity $useful)) -}}
{{- $tp = $t -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if eq $tp 0 }}{{ $tp = last $candidates }}{{ end -}}
{{- end -}}
{{- $room := get $rooms (toString $tp) -}}
{{- $capacity := get $capacities (toString $tp) -}}
{{- $fits := false -}}
{{- if eq $kvBytes 0 }}{{ $fits = ge $room 0 }}{{ else }}{{ $fits = ge $capacity $required }}{{ end -}}
{{- if not $fits -}}
{{- $reserve := int64 $c.gpuReserveBytes -}}
{{- if gt $tp 1 }}{{ $reserve = add $reserve $c.tpReserveBytes }}{{ end -}}
{{- $weights := div (add $m.weightBytes (sub $tp 1)) $tp -}}
{{- $where := printf "%s does not fit profile %s: at tensor parallel %d on %d x %s GiB GPU(s), gpu_memory_utilization %s allows %s GiB per GPU" $m.id $name $tp $gpuCount (include "zarf-vllm.gib" (mul $memoryMib $c.mib)) (include "zarf-vllm.permille" $util) (include "zarf-vllm.gib" $budget) -}}
{{- $message := "" -}}
{{- if or (lt $room 0) (eq $kvBytes 0) -}}
{{- $message = printf "%s, and each GPU needs %s GiB of weights + %s GiB of activations + %s GiB of runtime reserve = %s GiB" $where (include "zarf-vllm.gib" $weights) (include "zarf-vllm.gib" $activation) (include "zarf-vllm.gib" $reserve) (include "zarf-vllm.gib" (add $weights $activation $reserve)) -}}
{{- else -}}
{{- $message = printf "%s, which leaves %s GiB for the KV cache after %s GiB of weights, %s GiB of activations and %s GiB of reserve: room for %d tokens at %d bytes per token, and %s needs %s GiB per GPU" $where (include "zarf-vllm.gib" $room) (include "zarf-vllm.gib" $weights) (include "zarf-vllm.gib" $activation) (include "zarf-vllm.gib" $reserve) $capacity $kvBytes (include "zarf-vllm.whatNeeds" (dict "o" $o "required" $required)) (include "zarf-vllm.gib" (div (add (mul $required $kvBytes) (sub $tp 1)) $tp)) -}}
{{- end -}}
{{- include "zarf-vllm.refuseFit" (dict "root" .root "name" $name "message" $message) -}}
{{- end -}}
{{- $kvCapacity := -1 -}}
{{- if gt $kvBytes 0 }}{{ $kvCapacity = $capacity }}{{ end -}}
{{- $shmGib := 0 -}}
{{- if gt $tp 1 }}{{ $shmGib = div (mul $tp $c.shmBytesPerRank) $c.gib }}{{ end -}}
{{- $runtime := add $c.hostRuntimeBytes (mul $c.hostBytesPerGpuWorker $tp) -}}
{{- $hostMemory := include "zarf-vllm.hostMemory" (dict "root" .root "name" $name "m" $m "c" $c "p" $p "o" $o "runtime" $runtime "kvGib" 0 "shmGib" $shmGib) -}}
{{- $maxModelLen := 0 -}}
{{- if hasKey $o "maxModelLen" -}}
{{- $maxModelLen = int64 $o.maxModelLen -}}
{{- else -}}
{{- $maxModelLen = include "zarf-vllm.autoLen" (dict "m" $m "p" $p "c" $c "capacity" $kvCapacity) -}}
{{- end -}}
{{- $hostCpu := mul $p.host.cpu $tp -}}
{{- if hasKey $o "hostCpu" }}{{ $hostCpu = int64 $o.hostCpu }}{{ end -}}
{{- dict
  "profile" $name "model" $m.id "gpus" $tp "gpuMemoryMib" $memoryMib "tensorParallelSize" $tp "dtype" "auto"
  "kvCacheDtype" $kvDtype "utilPermille" $util
  "maxModelLen" (int64 $maxModelLen) "maxNumSeqs" $cb.seqs "maxNumBatchedTokens" $cb.batched
  "enforceEager" $p.engine.enforceEager "cpuKvcacheGib" nil "kvBytesPerToken" $kvBytes
  "kvCapacityTokens" $kvCapacity "shmGib" $shmGib "hostMemoryGib" (int64 $hostMemory)
  "hostCpu" $hostCpu "startupSeconds" (add $c.startupBaseSeconds (div $m.weightBytes $c.loadBytesPerSecond))
  | toJson -}}
{{- end -}}
