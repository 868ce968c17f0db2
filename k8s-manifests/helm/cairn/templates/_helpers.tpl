{{/*
The labels this chart adds beyond k8s-manifests/base: Helm's standard ones. Kept here, and
only here, so that the comparison with `kubectl kustomize k8s-manifests/base`
(tests/tests/helm_chart.rs) strips exactly these keys.
*/}}
{{- define "cairn.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
{{- end -}}

{{/* Labels of every object: the base's (app.kubernetes.io/part-of) and Helm's. */}}
{{- define "cairn.labels" -}}
app.kubernetes.io/part-of: cairn
{{ include "cairn.helmLabels" . }}
{{- end -}}

{{/* Labels of a pod template: (dict "root" $ "name" "cairn-x"). */}}
{{- define "cairn.podLabels" -}}
app.kubernetes.io/name: {{ .name }}
{{ include "cairn.helmLabels" .root }}
{{- end -}}

{{/*
Name of a cluster-scoped object: (dict "root" $ "name" "cairn-x"). The base's name for release
`cairn`, `<name>-<release>` for any other, so that releases in several namespaces do not
share (or fight over) their ClusterRoles and bindings.
*/}}
{{- define "cairn.clusterName" -}}
{{- if eq .root.Release.Name "cairn" -}}
{{ .name }}
{{- else -}}
{{ printf "%s-%s" .name .root.Release.Name }}
{{- end -}}
{{- end -}}

{{/* A job's image: (dict "root" $ "job" .Values.etcdSnapshot). */}}
{{- define "cairn.image" -}}
{{- $tag := .job.image.tag | default .root.Values.image.tag -}}
{{- if .root.Values.image.registry -}}
{{ printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .job.image.name $tag }}
{{- else -}}
{{ printf "%s:%s" .job.image.name $tag }}
{{- end -}}
{{- end -}}

{{/* The fields of a container every cairn container has: image, pull policy, security. */}}
{{- define "cairn.containerCommon" -}}
image: {{ include "cairn.image" . | quote }}
{{- with .root.Values.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.containerSecurityContext | nindent 2 }}
resources:
  {{- toYaml .job.resources | nindent 2 }}
{{- end -}}

{{/* Environment entries from a map (name: value), sorted by name. */}}
{{- define "cairn.envMap" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* OTLP export settings, when an endpoint is set. */}}
{{- define "cairn.otelEnv" -}}
{{- with .Values.telemetry.otlp.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $.Values.telemetry.otlp.protocol | quote }}
{{- end }}
{{- end -}}

{{/*
`env:` of a job's container from its own entries (a rendered list, possibly empty) plus its
extraEnv and the OTLP settings; left out entirely when empty, as the base does.
(dict "root" $ "job" .Values.x "env" "<rendered entries>")
*/}}
{{- define "cairn.jobEnv" -}}
{{- $env := printf "%s%s%s" (.env | default "") (include "cairn.envMap" .job.extraEnv) (include "cairn.otelEnv" .root) | trim -}}
{{- if $env }}
env:
{{ $env }}
{{- end }}
{{- end -}}

{{/* envFrom of a job's container: the repository settings, and the static credentials. */}}
{{- define "cairn.jobEnvFrom" -}}
envFrom:
  - configMapRef: {name: cairn-repo}
{{- with .Values.credentials.s3Secret }}
  - secretRef: {name: {{ . | quote }}}
{{- end }}
{{- end -}}

{{/* Scheduling fields of a pod spec: (dict "root" $ "job" .Values.x). */}}
{{- define "cairn.scheduling" -}}
{{- with .job.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .job.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .job.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (.job.priorityClassName | default .root.Values.priorityClassName) }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/*
The CronJob fields around the job template: (dict "root" $ "job" .Values.x
"startingDeadlineSeconds" n).
*/}}
{{- define "cairn.cronJobSpec" -}}
schedule: {{ .job.schedule | quote }}
{{- with .job.timeZone }}
timeZone: {{ . | quote }}
{{- end }}
{{- if .job.suspend }}
suspend: true
{{- end }}
concurrencyPolicy: Forbid
startingDeadlineSeconds: {{ .startingDeadlineSeconds }}
successfulJobsHistoryLimit: 3
failedJobsHistoryLimit: 3
{{- end -}}

{{/*
The Job's podFailurePolicy on cairn's exit codes: (list 2 4) fail the Job at once (usage,
integrity/denied; the PVC ingest adds 3, partial), 5 (lock held) and node disruptions do not
count against the retries.
*/}}
{{- define "cairn.podFailurePolicy" -}}
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes: {containerName: cairn, operator: In, values: {{ toJson . }}}
    - action: Ignore
      onExitCodes: {containerName: cairn, operator: In, values: [5]}
    - action: Ignore
      onPodConditions: [{type: DisruptionTarget}]
{{- end -}}

{{/* The write key volume, mounted 0440 (288): readable through the pod's fsGroup. */}}
{{- define "cairn.writeKeyVolume" -}}
- name: write-key
  secret: {secretName: {{ .Values.credentials.writeKeySecret | quote }}, defaultMode: 288}
{{- end -}}

{{- /* Where the index goes when it outgrows its share of the memory budget (CAIRN_CACHE_DIR). */ -}}
{{- define "cairn.cacheVolume" -}}
- name: cache
  emptyDir: {}
{{- end -}}

{{/* A job's ServiceAccount: (dict "root" $ "job" .Values.x "name" "cairn-x"). */}}
{{- define "cairn.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "cairn.labels" .root | nindent 4 }}
  {{- with (merge (dict) (.job.serviceAccount.annotations | default dict) (.root.Values.serviceAccount.annotations | default dict)) }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- $automount := get .job.serviceAccount "automountServiceAccountToken" }}
{{- if kindIs "bool" $automount }}
automountServiceAccountToken: {{ $automount }}
{{- end }}
{{- end -}}
