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

{{/* Shared state is not there yet: refuse what would need it, saying why. */}}
{{- define "kotae.checkReplicas" -}}
{{- $why := "Kotae replicas do not share their lexical index yet: each keeps it (and the list of ingested documents) in its own data volume, so a second replica would answer from a different knowledge base, even with vectors in a Qdrant server and the state in PostgreSQL. Run one replica (replicaCount: 1) without autoscaling or a disruption budget." }}
{{- if gt (int .Values.replicaCount) 1 }}{{ fail (printf "replicaCount %d: %s" (int .Values.replicaCount) $why) }}{{ end }}
{{- if .Values.autoscaling.enabled }}{{ fail (printf "autoscaling.enabled: %s" $why) }}{{ end }}
{{- if .Values.podDisruptionBudget.enabled }}{{ fail (printf "podDisruptionBudget.enabled: %s" $why) }}{{ end }}
{{- end }}
