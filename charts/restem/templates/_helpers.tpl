{{/* Names, labels, addresses and the pieces every restem pod shares. */}}

{{- define "restem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "restem.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The five services, in start order. Workers load models; GPU workers may request GPUs. */}}
{{- define "restem.services" -}}coordinator verifier sampler trainer evaluator{{- end -}}
{{- define "restem.workers" -}}sampler trainer evaluator{{- end -}}

{{/* Full gRPC service names: readiness asks for these, so a pod is ready only when its API is. */}}
{{- define "restem.grpcName" -}}
{{- $names := dict "coordinator" "restem.coordinator.v1.RunService" "verifier" "restem.verifier.v1.VerifierService" "sampler" "restem.sampler.v1.SamplerService" "trainer" "restem.trainer.v1.TrainerService" "evaluator" "restem.evaluator.v1.EvaluatorService" -}}
{{- get $names . -}}
{{- end -}}

{{/* (dict "root" $ "component" "sampler") */}}
{{- define "restem.componentName" -}}
{{- printf "%s-%s" (include "restem.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "restem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "restem.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "restem.labels" -}}
{{ include "restem.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: restem
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* (dict "root" $ "image" .Values.sampler.image) -> registry/repository:tag */}}
{{- define "restem.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "restem.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "restem.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ---- NATS and S3 addresses: exactly one source each (checked in restem.validate). ---- */}}

{{/* Name the official subcharts give their Service (alias + nameOverride, as their helpers do). */}}
{{- define "restem.subchartFullname" -}}
{{- $v := .values -}}
{{- if $v.fullnameOverride -}}
{{- $v.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .chart $v.nameOverride -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "restem.natsUrl" -}}
{{- if .Values.nats.install -}}
nats://{{ include "restem.componentName" (dict "root" . "component" "nats") }}:4222
{{- else if .Values.natsChart.enabled -}}
nats://{{ include "restem.subchartFullname" (dict "root" . "values" .Values.natsChart "chart" "natsChart") }}:4222
{{- else -}}
{{- .Values.externalNats.url -}}
{{- end -}}
{{- end -}}

{{- define "restem.natsMonitoring" -}}
{{- if .Values.nats.install -}}
{{ include "restem.componentName" (dict "root" . "component" "nats") }}.{{ .Release.Namespace }}.svc:8222
{{- else if .Values.natsChart.enabled -}}
{{ include "restem.subchartFullname" (dict "root" . "values" .Values.natsChart "chart" "natsChart") }}-headless.{{ .Release.Namespace }}.svc:8222
{{- else -}}
{{- .Values.externalNats.monitoringEndpoint -}}
{{- end -}}
{{- end -}}

{{- define "restem.s3Endpoint" -}}
{{- if .Values.minio.install -}}
{{ include "restem.componentName" (dict "root" . "component" "minio") }}:9000
{{- else if .Values.minioChart.enabled -}}
{{ include "restem.subchartFullname" (dict "root" . "values" .Values.minioChart "chart" "minioChart") }}:9000
{{- else -}}
{{- .Values.externalS3.endpoint -}}
{{- end -}}
{{- end -}}

{{/* Ports for NetworkPolicy egress: from each NATS URL / the S3 endpoint, else the scheme default. */}}
{{- define "restem.natsPorts" -}}
{{- $ports := list -}}
{{- range (splitList "," (include "restem.natsUrl" .)) -}}
{{- $hostport := regexReplaceAll "^[a-z]+://([^@/]*@)?" (trim .) "" | trimSuffix "/" -}}
{{- $p := regexFind ":[0-9]+$" $hostport | trimPrefix ":" -}}
{{- $ports = append $ports (default "4222" $p | int) -}}
{{- end -}}
{{- toJson ($ports | uniq) -}}
{{- end -}}

{{- define "restem.s3Port" -}}
{{- $p := regexFind ":[0-9]+$" (include "restem.s3Endpoint" .) | trimPrefix ":" -}}
{{- default (ternary "443" "80" .Values.s3.secure) $p -}}
{{- end -}}

{{- define "restem.s3SecretName" -}}
{{- default (include "restem.componentName" (dict "root" . "component" "s3")) .Values.s3.existingSecret -}}
{{- end -}}

{{- define "restem.apiSecretName" -}}
{{- default (include "restem.componentName" (dict "root" . "component" "api-token")) .Values.apiAuth.existingSecret -}}
{{- end -}}

{{- define "restem.natsSecretName" -}}
{{- default (include "restem.componentName" (dict "root" . "component" "nats-auth")) .Values.nats.auth.existingSecret -}}
{{- end -}}

{{/* A Secret value: the one given, else the one already in the cluster (upgrades keep it), else random. */}}
{{- define "restem.secretValue" -}}
{{- if .given -}}
{{- .given -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* ---- Pod pieces ---- */}}

{{- define "restem.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .root.Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .root.Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .root.Values.podSecurityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  {{- toYaml (default (dict "type" "RuntimeDefault") .seccompProfile) | nindent 2 }}
{{- with .appArmorProfile }}
appArmorProfile:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Not configurable: the services write only to the mounted volumes. */}}
{{- define "restem.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Env every restem container gets: caches under /tmp (the root filesystem is read-only), secrets. */}}
{{- define "restem.env" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: HF_HOME
  value: /tmp/hf
- name: HF_HUB_OFFLINE
  value: "1"
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: PYTHONUNBUFFERED
  value: "1"
- name: RESTEM_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "restem.s3SecretName" . }}, key: {{ .Values.s3.accessKeyKey }}}
- name: RESTEM_S3_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "restem.s3SecretName" . }}, key: {{ .Values.s3.secretKeyKey }}}
{{- if .Values.apiAuth.enabled }}
- name: RESTEM_API_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ include "restem.apiSecretName" . }}, key: {{ .Values.apiAuth.tokenKey }}}
{{- end }}
{{- if .Values.nats.auth.enabled }}
- name: RESTEM_NATS_USER
  valueFrom:
    secretKeyRef: {name: {{ include "restem.natsSecretName" . }}, key: {{ .Values.nats.auth.userKey }}}
- name: RESTEM_NATS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "restem.natsSecretName" . }}, key: {{ .Values.nats.auth.passwordKey }}}
{{- end }}
{{- end -}}

{{/*
The YAML config a service reads (python -m services.<svc> --config /etc/restem/config.yaml).
Chart-owned fields first; `<svc>.config` adds the rest (the schema keeps it off the chart's fields).
*/}}
{{- define "restem.serviceConfig" -}}
{{- $root := .root -}}
{{- $svc := .component -}}
{{- $v := index $root.Values $svc -}}
{{- $cfg := dict
  "grpc" (dict "host" "0.0.0.0" "port" (int $root.Values.grpc.port) "grace_s" $root.Values.grpc.graceSeconds "max_message_mb" (int $root.Values.grpc.maxMessageMb) "public_reads" $root.Values.apiAuth.publicReads)
  "nats" (dict "url" (include "restem.natsUrl" $root) "prefix" $root.Values.nats.prefix)
  "store" (dict "kind" "s3" "endpoint" (include "restem.s3Endpoint" $root) "bucket" $root.Values.s3.bucket "secure" $root.Values.s3.secure "region" $root.Values.s3.region)
  "log_level" $root.Values.logLevel
  "log_format" $root.Values.logFormat
  "metrics" (dict "host" "0.0.0.0" "port" (int $root.Values.metrics.port)) -}}
{{- if has $svc (splitList " " (include "restem.workers" $root)) -}}
{{- $_ := set $cfg "device" $v.device -}}
{{- $_ := set $cfg "cache_dir" "/var/cache/restem" -}}
{{- end -}}
{{- if eq $svc "trainer" -}}
{{- $_ := set $cfg "work_dir" "/var/lib/restem/work" -}}
{{- $_ := set $cfg "nproc" (int $v.torchrun.nprocPerNode) -}}
{{- end -}}
{{- if eq $svc "verifier" -}}
{{- $_ := set $cfg.grpc "max_connection_age_s" 300 -}}
{{- end -}}
{{- if eq $svc "coordinator" -}}
{{- /* Fair share: a run keeps 1.25x the most sampler replicas' jobs out (see sample_jobs_per_run). */ -}}
{{- $s := $root.Values.sampler -}}
{{- $most := ternary $s.keda.maxReplicas (ternary $s.autoscaling.maxReplicas $s.replicas $s.autoscaling.enabled) $s.keda.enabled | int -}}
{{- $_ := set $cfg "sample_jobs_per_run" (div (add (mul $most 5) 3) 4) -}}
{{- /* Each sampler runs one job at a time: the E-step is cut into a multiple of its most replicas. */ -}}
{{- $_ := set $cfg "sampler_slots" $most -}}
{{- $w := $root.Values.verifier -}}
{{- $wmost := ternary $w.keda.maxReplicas (ternary $w.autoscaling.maxReplicas $w.replicas $w.autoscaling.enabled) $w.keda.enabled | int -}}
{{- $slots := mul $wmost (default 1 (default dict $w.config).concurrency | int) -}}
{{- $_ := set $cfg "verify_jobs_per_run" (div (add (mul $slots 5) 3) 4) -}}
{{- end -}}
{{- if or (eq $svc "evaluator") (eq $svc "trainer") -}}
{{- /* The headless Service: its name resolves to every ready verifier pod, and the client round-robins. */ -}}
{{- $_ := set $cfg "verifier_address" (printf "dns:///%s-headless:%d" (include "restem.componentName" (dict "root" $root "component" "verifier")) (int $root.Values.grpc.port)) -}}
{{- end -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy (default dict $v.config))) -}}
{{- end -}}
