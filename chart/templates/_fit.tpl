{{/*
The fit the pod runs with: {{ $fit := include "zarf-vllm.fit" . | fromJson }}.

Every number is decided by src/zarf_vllm/model/sizing.py. Without sizing overrides the chart
looks up the profile's `fit` (or fails with its `refusal`), both rendered at create. Overrides
(GPU_COUNT, MAX_MODEL_LEN, ...) cannot be decided ahead: "zarf-vllm.refit" then takes the
steps of sizing.fit() over `.Values.costs` (the model's byte and token counts, worked out by
the sizing per compute dtype and tensor-parallel size) and formats the sizing's own refusal texts
(`.Values.messages`). A refusal is a `fail`, which stops Helm before anything is applied.
tests/chart/test_chart.py checks that this and Python agree, numbers and messages alike.
*/}}
{{- define "zarf-vllm.fit" -}}
{{- $v := .Values -}}
{{- if not $v.model.id -}}
{{- fail "these values name no model: render them with `scripts/render-values MANIFEST --out FILE` and pass the file to Helm (-f FILE); a Zarf package carries them" -}}
{{- end -}}
{{- $name := include "zarf-vllm.profileName" . -}}
{{- $p := get $v.profiles $name -}}
{{- if ne $p.hardware.flavor $v.flavor -}}
{{- fail (printf $v.messages.flavor $name $p.hardware.flavor $v.flavor) -}}
{{- end -}}
{{- $o := include "zarf-vllm.overrides" . | fromJson -}}
{{- if $o -}}
{{- include "zarf-vllm.refit" (dict "root" . "name" $name "hw" $p.hardware "o" $o) -}}
{{- else if $p.refusal -}}
{{- fail $p.refusal -}}
{{- else -}}
{{- $p.fit | toJson -}}
{{- end -}}
{{- end -}}

{{/* sizing.fit() with overrides: the same steps, in the same order, over .Values.costs. */}}
{{- define "zarf-vllm.refit" -}}
{{- $v := .root.Values -}}{{- $k := $v.constants -}}{{- $m := $v.messages -}}
{{- $hw := .hw -}}{{- $o := .o -}}{{- $name := .name -}}{{- $cpu := eq $hw.flavor "cpu" -}}
{{- $c := get $v.costs (ternary (get $o "cpuDtype" | default $v.defaultDtype) $v.defaultDtype $cpu) -}}
{{- $refuse := dict "root" .root "name" $name -}}
{{- if $cpu -}}
{{- range $k.gpuOnly }}{{ if hasKey $o .field }}{{ fail (printf $m.gpuOnly .variable) }}{{ end }}{{ end -}}
{{- if not (has $c.quantization $k.cpuQuantizations) }}{{ include "zarf-vllm.refuseFit" (set $refuse "message" (printf $m.cpuQuantization $c.model $c.quantization)) }}{{ end -}}
{{- if and (hasKey $o "cpuDtype") (ne $c.quantization "none") }}{{ fail (printf $m.cpuDtypeQuantized $c.model $c.quantization) }}{{ end -}}
{{- else if hasKey $o "cpuKvcacheGib" }}{{ fail (printf $m.cpuOnly $name) }}
{{- else if hasKey $o "cpuDtype" }}{{ fail (printf $m.cpuDtypeOnly $name) }}{{ end -}}
{{- $stages := int64 ($hw.nodes | default 1) -}}
{{- if and $c.embedding (gt $stages 1) }}{{ include "zarf-vllm.refuseFit" (set $refuse "message" (printf $m.multiNodeEmbed $c.model $name $stages)) }}{{ end -}}
{{- if and (gt (int64 (get $o "apiProcesses" | default 1)) 1) (gt $stages 1) }}{{ fail (printf $m.apiProcessesNodes (int64 $o.apiProcesses) $name $stages) }}{{ end -}}
{{- /* QUANTIZATION against the weights and the GPUs, KV_CACHE_DTYPE=fp8 against the GPUs (sizing._check_quantization) */ -}}
{{- $q := get $o "quantization" | default "" -}}
{{- $own := or (eq $q "") (eq $q $c.quantization) -}}
{{- if $cpu -}}
{{- if not $own }}{{ fail (printf $m.quantizationCpu $q $c.model $c.quantization) }}{{ end -}}
{{- else -}}
{{- if and (eq (get $o "kvCacheDtype" | default "") "fp8") (not $hw.fp8) }}{{ fail (printf $m.fp8NoGpu "KV_CACHE_DTYPE" $name $hw.capabilityText) }}{{ end -}}
{{- if not $own -}}
{{- if ne $q "fp8" }}{{ fail (printf $m.quantizationMismatch $q $c.model $c.quantization) }}{{ end -}}
{{- if ne $c.quantization "none" }}{{ fail (printf $m.fp8Quantized $c.model $c.quantization) }}{{ end -}}
{{- if not (hasKey $c.gpuWeightBytes "fp8") }}{{ fail (printf $m.fp8SourceDtype $c.model $c.weightDtype) }}{{ end -}}
{{- if not $hw.fp8 }}{{ fail (printf $m.fp8NoGpu "QUANTIZATION" $name $hw.capabilityText) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- /* another quantization than the checkpoint's own: its weight bytes (Costs.gpu_weight_bytes) */ -}}
{{- $quantized := and (not $cpu) (not $own) -}}
{{- $quantizedBytes := ternary (get $c.gpuWeightBytes $q) 0 $quantized -}}
{{- /* no override above what the profile's hardware has (or, where it does not say, any has) */ -}}
{{- range $k.bounds -}}
{{- if hasKey $o .field -}}
{{- $value := int64 (get $o .field) -}}{{- $limit := get $hw.bounds .field -}}
{{- if and (not (kindIs "invalid" $limit)) (gt $value (int64 $limit)) }}{{ fail (printf $m.overProfile .variable $value (int64 $limit) .unit $name .why) }}{{ end -}}
{{- if and (kindIs "invalid" $limit) (gt $value (int64 .most)) }}{{ fail (printf $m.overAny .variable $value (int64 .most) .unit .mostWhat .why) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- /* context and batch, checked as vLLM checks them */ -}}
{{- $maxLen := int64 (get $o "maxModelLen" | default -1) -}}
{{- if gt $maxLen (int64 $c.maxPositions) }}{{ fail (printf $m.tooLong $maxLen (int64 $c.maxPositions) $c.model) }}{{ end -}}
{{- if and (gt $maxLen 0) (lt $maxLen (int64 $c.minContext)) }}{{ fail (printf $m.tooShort $maxLen (int64 $c.minContext) $c.model (int64 $c.minContext)) }}{{ end -}}
{{- $required := ternary $maxLen (int64 $c.minContext) (gt $maxLen 0) -}}
{{- $needed := printf (ternary $m.neededSet $m.neededAuto (gt $maxLen 0)) $required -}}
{{- $seqs := int64 (get $o "maxNumSeqs" | default $hw.maxNumSeqs) -}}
{{- $batched := int64 (get $o "maxNumBatchedTokens" | default $hw.maxNumBatchedTokens) -}}
{{- $classLen := mul (div (min (int64 $c.maxPositions) (int64 $hw.maxModelLen)) $k.blockSize) $k.blockSize -}}
{{- if $c.embedding -}}
{{- $length := ternary $maxLen $classLen (gt $maxLen 0) -}}
{{- if not (hasKey $o "maxNumBatchedTokens") }}{{ $batched = max $batched $length }}{{ end -}}
{{- if lt $batched $length }}{{ fail (printf $m.embedBatch $c.model $batched $length) }}{{ end -}}
{{- end -}}
{{- if lt $batched $seqs }}{{ fail (printf $m.batchSeqs $batched $seqs) }}{{ end -}}
{{- $activation := add (mul $c.activationBytesPerBatchedToken $batched) (mul $c.activationBytesPerSeq $seqs) -}}
{{- /* the KV cache: a fixed size on the CPU, what each GPU has left on GPUs */ -}}
{{- $kvDtype := get $o "kvCacheDtype" | default "auto" -}}
{{- $kvBytes := int64 (get $c.kvBytes $kvDtype) -}}
{{- $tp := 1 -}}{{- $capacity := -1 -}}{{- $usable := -1 -}}{{- $kvGib := 0 -}}{{- $gpuCount := 0 -}}{{- $memoryMib := 0 -}}
{{- $util := int64 (get $o "utilPermille" | default $hw.utilPermille) -}}
{{- $dp := 1 -}}
{{- if $cpu -}}
{{- $kvGib = int64 (get $o "cpuKvcacheGib" | default $hw.cpuKvcacheGib) -}}
{{- if gt $kvBytes 0 }}{{ $capacity = div (mul $kvGib $k.gib) $kvBytes }}{{ $usable = mul (max (sub (div $capacity $k.cpuBlockSize) 1) 0) $k.cpuBlockSize }}{{ end -}}
{{- if and (gt $kvBytes 0) (lt $usable $required) -}}
{{- $blocks := add (div (add $required (sub $k.cpuBlockSize 1)) $k.cpuBlockSize) 1 -}}
{{- include "zarf-vllm.refuseFit" (set $refuse "message" (printf $m.cpuShortKv $c.model $name $kvGib $capacity $kvBytes $usable (int64 $k.cpuBlockSize) $needed (include "zarf-vllm.gib" (mul $blocks $k.cpuBlockSize $kvBytes)))) -}}
{{- end -}}
{{- /* data parallel on the CPU (sizing.data_parallel_cpu): one engine unless set */ -}}
{{- $dp = int64 (get $o "dataParallelSize" | default 1) -}}
{{- if hasKey $o "hostCpu" -}}
{{- if lt (int64 $o.hostCpu) $dp }}{{ fail (printf $m.dataParallelFewCores (int64 $o.hostCpu) $dp $dp) }}{{ end -}}
{{- else -}}
{{- $limit := $hw.bounds.hostCpu -}}{{- $where := printf $m.coresOfProfile $name -}}
{{- if kindIs "invalid" $limit }}{{ $limit = $k.maxHostCpu }}{{ $where = $m.coresOfAny }}{{ end -}}
{{- $cores := mul $hw.hostCpu $dp -}}
{{- if gt $cores (int64 $limit) }}{{ fail (printf $m.dataParallelCores $dp (int64 $hw.hostCpu) $cores (int64 $limit) $where (div (int64 $limit) (int64 $hw.hostCpu))) }}{{ end -}}
{{- end -}}
{{- else -}}
{{- $gpuCount = int64 (get $o "gpuCount" | default $hw.gpuCount | default 0) -}}
{{- $memoryMib = int64 (ternary (mul (get $o "gpuMemoryGib" | default 0) 1024) ($hw.gpuMemoryMib | default 0) (hasKey $o "gpuMemoryGib")) -}}
{{- if or (eq $gpuCount 0) (eq $memoryMib 0) }}{{ fail (printf $m.customNeedsGpus $name) }}{{ end -}}
{{- $total := mul $memoryMib $k.mib -}}
{{- $cudaTotal := sub $total $k.cudaTotalShortfallBytes -}}
{{- $budget := div (mul $cudaTotal $util) 1000 -}}
{{- $free := sub $cudaTotal $k.freeAtStartShortfallBytes -}}
{{- if gt $budget $free }}{{ fail (printf $m.utilTooHigh (include "zarf-vllm.permille" $util) (include "zarf-vllm.gib" $budget) (include "zarf-vllm.gib" $total) (include "zarf-vllm.gib" $free) (include "zarf-vllm.permille" (mul (div (mul $free 100) $cudaTotal) 10))) }}{{ end -}}
{{- $candidates := list -}}{{- $rooms := dict -}}{{- $capacities := dict -}}{{- $usables := dict -}}
{{- range $t := $c.tensorParallelSizes -}}
{{- if eq (mod $gpuCount $t) 0 -}}
{{- $cost := get $c.tensorParallel (toString $t) -}}
{{- /* each GPU: its tensor-parallel share of its pipeline stage's layers (one stage per node) */ -}}
{{- $share := include "zarf-vllm.rankWeights" (dict "cost" $cost "t" $t "quantized" $quantized "bytes" $quantizedBytes) | int64 -}}
{{- $weights := div (add $share (sub $stages 1)) $stages -}}
{{- $lora := div (add $cost.loraBytes (sub $stages 1)) $stages -}}
{{- $room := sub $budget (add $weights $activation $cost.reserveBytes $lora) -}}
{{- $candidates = append $candidates (int64 $t) -}}
{{- $_ := set $rooms (toString $t) $room -}}
{{- $_ := set $capacities (toString $t) (ternary (div (mul (max $room 0) $t $stages) (max $kvBytes 1)) 0 (gt $kvBytes 0)) -}}
{{- $_ := set $usables (toString $t) (div (mul (get $capacities (toString $t)) $k.kvUsablePercent) 100) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $o "tensorParallelSize" -}}
{{- $tp = int64 $o.tensorParallelSize -}}
{{- if not (has $tp $candidates) }}{{ fail (printf $m.badTensorParallel $tp $c.model $gpuCount (int64 $c.attentionHeads) (int64 $c.kvHeads) $gpuCount (join ", " $candidates)) }}{{ end -}}
{{- else -}}
{{- /* the smallest size with a useful cache; failing that, the largest the heads allow */ -}}
{{- $useful := mul $k.usefulKvSequences (ternary $maxLen $classLen (gt $maxLen 0)) -}}
{{- $tp = 0 -}}
{{- range $t := $candidates -}}
{{- if and (eq $tp 0) (include "zarf-vllm.holds" (dict "room" (get $rooms (toString $t)) "usable" (get $usables (toString $t)) "kvBytes" $kvBytes "tokens" $useful)) }}{{ $tp = $t }}{{ end -}}
{{- end -}}
{{- if eq $tp 0 }}{{ $tp = last $candidates }}{{ end -}}
{{- /* a profile that spans nodes takes whole nodes */ -}}
{{- if gt $stages 1 }}{{ $tp = last $candidates }}{{ end -}}
{{- end -}}
{{- $cost := get $c.tensorParallel (toString $tp) -}}
{{- $room := get $rooms (toString $tp) -}}
{{- if not (include "zarf-vllm.holds" (dict "room" $room "usable" (get $usables (toString $tp)) "kvBytes" $kvBytes "tokens" $required)) -}}
{{- $where := printf $m.gpuBudget $c.model $name $tp $gpuCount (include "zarf-vllm.gib" $total) (include "zarf-vllm.permille" $util) (include "zarf-vllm.gib" $budget) -}}
{{- $share := include "zarf-vllm.rankWeights" (dict "cost" $cost "t" $tp "quantized" $quantized "bytes" $quantizedBytes) | int64 -}}
{{- $gpuWeights := div (add $share (sub $stages 1)) $stages -}}
{{- $w := include "zarf-vllm.gib" $gpuWeights -}}{{- $a := include "zarf-vllm.gib" $activation -}}{{- $r := include "zarf-vllm.gib" $cost.reserveBytes -}}
{{- /* the LoRA adapter slots, named only where LoRA is on (sizing._GpuBudget.lora_part) */ -}}
{{- $gpuLora := div (add $cost.loraBytes (sub $stages 1)) $stages -}}
{{- $loraSum := "" -}}{{- $loraList := "" -}}
{{- if gt $gpuLora 0 -}}
{{- $l := include "zarf-vllm.gib" $gpuLora -}}
{{- $loraSum = printf $m.gpuLoraSum $l (int64 $c.loraSlots) (int64 $c.loraRank) -}}
{{- $loraList = printf $m.gpuLoraList $l (int64 $c.loraSlots) (int64 $c.loraRank) -}}
{{- end -}}
{{- if or (lt $room 0) (eq $kvBytes 0) -}}
{{- include "zarf-vllm.refuseFit" (set $refuse "message" (printf $m.gpuNoRoom $where $w $loraSum $a $r (include "zarf-vllm.gib" (add $gpuWeights $gpuLora $activation $cost.reserveBytes)))) -}}
{{- end -}}
{{- include "zarf-vllm.refuseFit" (set $refuse "message" (printf $m.gpuShortKv $where (include "zarf-vllm.gib" $room) $w $loraList $a $r (int64 (get $capacities (toString $tp))) $kvBytes (int64 $k.kvUsablePercent) (int64 (get $usables (toString $tp))) $needed (include "zarf-vllm.gib" (div (add (mul $required $kvBytes 100) (sub (mul $k.kvUsablePercent $tp $stages) 1)) (mul $k.kvUsablePercent $tp $stages))))) -}}
{{- end -}}
{{- if gt $kvBytes 0 }}{{ $capacity = int64 (get $capacities (toString $tp)) }}{{ $usable = int64 (get $usables (toString $tp)) }}{{ end -}}
{{- /* the whole node (sizing.data_parallel_gpu): as many engines as the GPUs hold, unless set */ -}}
{{- $most := div $gpuCount $tp -}}
{{- $dp = int64 (get $o "dataParallelSize" | default $most) -}}
{{- if gt $dp $most }}{{ fail (printf $m.dataParallelGpus $dp $tp (mul $dp $tp) $gpuCount $name $most) }}{{ end -}}
{{- end -}}
{{- /* host memory: what loading needs, against HOST_MEMORY_GIB or what the profile's nodes give;
       every engine counted (sizing.EngineHost) */ -}}
{{- $tpCost := get $c.tensorParallel (toString $tp) -}}
{{- $runtime := add $tpCost.hostRuntimeBytes (mul (sub $dp 1) $tpCost.engineHostBytes) (ternary (mul $activation $dp) 0 $cpu) -}}
{{- $weights := mul $c.weightBytes (ternary $dp 1 $cpu) -}}
{{- $shmGib := mul (int64 $tpCost.shmGib) $dp -}}
{{- $kvTotal := mul $kvGib $dp -}}
{{- $loraHost := mul $tpCost.hostLoraBytes $dp -}}
{{- /* API_PROCESSES front ends (sizing.front_end_host_bytes) */ -}}
{{- $apiProcesses := int64 (get $o "apiProcesses" | default 1) -}}
{{- $frontEnds := ternary (mul $apiProcesses $k.hostBytesPerFrontEnd) 0 (gt $apiProcesses 1) -}}
{{- $need := div (add $weights $runtime $loraHost $frontEnds (mul (add $kvTotal $shmGib) $k.gib) (sub $k.gib 1)) $k.gib -}}
{{- $parts := printf $m.hostParts (include "zarf-vllm.gib" $weights) (include "zarf-vllm.gib" $runtime) -}}
{{- if gt $loraHost 0 }}{{ $parts = print $parts (printf $m.hostPartsLora (include "zarf-vllm.gib" $loraHost)) }}{{ end -}}
{{- if gt $frontEnds 0 }}{{ $parts = print $parts (printf $m.hostPartsFrontEnds (include "zarf-vllm.gib" $frontEnds) $apiProcesses) }}{{ end -}}
{{- if gt $kvTotal 0 }}{{ $parts = print $parts (printf $m.hostPartsKv $kvTotal) }}{{ end -}}
{{- if gt $shmGib 0 }}{{ $parts = print $parts (printf $m.hostPartsShm $shmGib) }}{{ end -}}
{{- $host := int64 (get $o "hostMemoryGib" | default $need) -}}
{{- if lt $host $need }}{{ include "zarf-vllm.refuseFit" (set $refuse "message" (printf $m.hostBelowNeed $host $need $c.model $name $parts)) }}{{ end -}}
{{- if and (not (hasKey $o "hostMemoryGib")) $hw.hostMemoryGib (gt $need (int64 $hw.hostMemoryGib)) }}{{ include "zarf-vllm.refuseFit" (set $refuse "message" (printf $m.hostOverNode $c.model $need $name $parts (int64 $hw.hostMemoryGib))) }}{{ end -}}
{{- /* unset: the class's length, capped by what the KV cache may give a context, on a block boundary */ -}}
{{- $length := ternary $maxLen $classLen (gt $maxLen 0) -}}
{{- if and (le $maxLen 0) (ge $usable 0) }}{{ $length = min $classLen (mul (div $usable $k.blockSize) $k.blockSize) }}{{ end -}}
{{- dict
  "profile" $name "model" $c.model "gpus" (ternary 0 (mul $tp $dp) $cpu) "gpuMemoryMib" $memoryMib
  "tensorParallelSize" $tp "dataParallelSize" $dp "dtype" $c.dtype "kvCacheDtype" $kvDtype "utilPermille" $util
  "maxModelLen" $length "maxNumSeqs" $seqs "maxNumBatchedTokens" $batched
  "enforceEager" $hw.enforceEager "cpuKvcacheGib" (ternary $kvGib nil $cpu)
  "kvBytesPerToken" $kvBytes "kvCapacityTokens" $capacity "shmGib" $shmGib "hostMemoryGib" $host
  "hostCpu" (int64 (get $o "hostCpu" | default (mul $hw.hostCpu $tp $dp))) "startupSeconds" $c.startupSeconds
  "nodes" $stages "pipelineParallelSize" $stages "quantization" (ternary $q nil $quantized)
  | toJson -}}
{{- end -}}

{{/* Each rank's bytes of the weights before the pipeline split (sizing._GpuBudget.weights):
the checkpoint's share, or under another quantization ceil(its bytes / t). */}}
{{- define "zarf-vllm.rankWeights" -}}
{{- if .quantized }}{{ div (add (int64 .bytes) (sub (int64 .t) 1)) (int64 .t) }}{{ else }}{{ int64 .cost.weightBytes }}{{ end -}}
{{- end -}}

{{/* "true" when a GPU holds the tokens (sizing._GpuBudget.holds). */}}
{{- define "zarf-vllm.holds" -}}
{{- if eq (int64 .kvBytes) 0 }}{{ if ge (int64 .room) 0 }}true{{ end }}{{ else if ge (int64 .usable) (int64 .tokens) }}true{{ end -}}
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

{{/* The sizing override variables that are set, parsed as .Values.constants.overrides says
(from chart/zarf/deploy-variables.yaml): integers, text, utilization in permille. */}}
{{- define "zarf-vllm.overrides" -}}
{{- $o := .Values.overrides | default dict -}}
{{- $parsed := dict -}}
{{- range .Values.constants.overrides -}}
{{- $text := toString (get $o .value | default "") -}}
{{- if and $text (eq .kind "int") }}{{ $_ := set $parsed .field (atoi $text) }}{{ end -}}
{{- if and $text (eq .kind "text") }}{{ $_ := set $parsed .field $text }}{{ end -}}
{{- if and $text (eq .kind "permille") }}{{ $_ := set $parsed .field (atoi (trunc 3 (printf "%s00" (last (splitList "." $text))))) }}{{ end -}}
{{- end -}}
{{- $parsed | toJson -}}
{{- end -}}

{{/* A refusal for lack of room names the profiles and manifests that fit (sizing.alternatives). */}}
{{- define "zarf-vllm.alternatives" -}}
{{- $v := .root.Values -}}{{- $m := $v.messages -}}
{{- if $v.fits }}{{ printf $m.fitsProfiles $v.model.id (join ", " $v.fits) }}{{ else }}{{ printf $m.fitsNoProfile $v.model.id }}{{ end -}}
{{- if .name }}{{ with (get $v.profiles .name).fitsManifests }}{{ printf $m.fitsManifests $.name (join ", " .) }}{{ end }}{{ end -}}
.
{{- end -}}

{{- define "zarf-vllm.refuseFit" -}}
{{- fail (printf "%s%s" .message (include "zarf-vllm.alternatives" .)) -}}
{{- end -}}

{{/* Bytes as GiB with one decimal, rounded down (sizing.gib). */}}
{{- define "zarf-vllm.gib" -}}
{{- $tenths := div (mul . 10) 1073741824 -}}
{{- printf "%d.%d" (div $tenths 10) (mod $tenths 10) -}}
{{- end -}}

{{/* Permille as gpu_memory_utilization is written: 920 -> 0.92 (sizing.permille). */}}
{{- define "zarf-vllm.permille" -}}
{{- regexReplaceAll "0+$" (printf "0.%03d" (int64 .)) "" -}}
{{- end -}}
