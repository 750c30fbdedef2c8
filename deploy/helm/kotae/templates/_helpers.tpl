{{- define "kotae.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kotae.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kotae.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kotae.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kotae.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kotae.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kotae.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "kotae.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kotae.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kotae.claimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "kotae.fullname" .)) }}
{{- end }}

{{- define "kotae.secretName" -}}
{{- .Values.existingSecret | default (include "kotae.fullname" .) }}
{{- end }}

{{/* The Qdrant server's gRPC URL, or nothing for the embedded engine. */}}
{{- define "kotae.qdrantUrl" -}}
{{- if .Values.qdrant.enabled }}
{{- printf "http://%s-qdrant:6334" (include "kotae.fullname" .) }}
{{- else }}
{{- .Values.externalQdrant.url }}
{{- end }}
{{- end }}

{{/* Settings every Kotae container shares: configuration, data, models, secrets. */}}
{{- define "kotae.env" -}}
- name: KOTAE_CONFIG
  value: /etc/kotae/kotae.toml
- name: KOTAE_DATA_DIR
  value: /data
{{- with (include "kotae.qdrantUrl" .) }}
- name: KOTAE_QDRANT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.externalQdrant.collection }}
- name: KOTAE_QDRANT_COLLECTION
  value: {{ . | quote }}
{{- end }}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}

{{- define "kotae.envFrom" -}}
{{- if or .Values.secretEnv .Values.existingSecret }}
envFrom:
  - secretRef:
      name: {{ include "kotae.secretName" . }}
{{- end }}
{{- end }}

{{/* Replicas share the writer's knowledge base: refuse what would not, saying why. */}}
{{- define "kotae.checkReplicas" -}}
{{- if gt (int .Values.replicaCount) 1 }}{{ fail (printf "replicaCount %d: the writer is one pod (it holds the knowledge base and runs the jobs that change it); scale the serving pods with readReplicas.count or autoscaling instead" (int .Values.replicaCount)) }}{{ end }}
{{- if or (gt (int .Values.readReplicas.count) 0) .Values.autoscaling.enabled .Values.podDisruptionBudget.enabled }}
{{- $what := ternary "autoscaling.enabled" (ternary "podDisruptionBudget.enabled" "readReplicas.count" .Values.podDisruptionBudget.enabled) .Values.autoscaling.enabled }}
{{- if or (not .Values.persistence.enabled) (ne .Values.persistence.accessMode "ReadWriteMany") }}{{ fail (printf "%s: read replicas share the writer's data volume (the lexical index, which they follow, and the uploads): set persistence.enabled and persistence.accessMode ReadWriteMany, on a storage class that offers it" $what) }}{{ end }}
{{- if not (include "kotae.qdrantUrl" .) }}{{ fail (printf "%s: read replicas need the vectors in a Qdrant server (qdrant.enabled or externalQdrant.url): the embedded engine's files belong to one process" $what) }}{{ end }}
{{- if not (or (hasKey .Values.secretEnv "KOTAE_STATE_URL") .Values.existingSecret) }}{{ fail (printf "%s: read replicas need the state (conversations, jobs, audit) in PostgreSQL: set KOTAE_STATE_URL in secretEnv or in existingSecret" $what) }}{{ end }}
{{- end }}
{{- end }}
