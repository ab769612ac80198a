{{/*
Named templates of Ferrum's chart. The chart keeps to the template subset that
scripts/render-chart.py renders (documented there and in docs/kubernetes.md).
*/}}

{{/* The chart's name, 63 characters at most. */}}
{{- define "ferrum.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name, with the chart's name unless it holds it. */}}
{{- define "ferrum.fullname" -}}
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

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "ferrum.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "ferrum.labels" -}}
helm.sh/chart: {{ include "ferrum.chart" . }}
{{ include "ferrum.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: inference-server
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the release's pods. */}}
{{- define "ferrum.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferrum.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The service account the pods run as. */}}
{{- define "ferrum.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferrum.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag of the server image. */}}
{{- define "ferrum.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* What --model-repository names: the mount path, or the s3:// URI. */}}
{{- define "ferrum.repositoryLocation" -}}
{{- $repo := .Values.modelRepository }}
{{- if eq $repo.type "s3" }}
{{- $uri := required "modelRepository.s3.uri is required when modelRepository.type is s3" $repo.s3.uri }}
{{- if not (hasPrefix "s3://" $uri) }}
{{- fail (printf "modelRepository.s3.uri must start with s3:// (got %q)" $uri) }}
{{- end }}
{{- $uri }}
{{- else }}
{{- $repo.mountPath }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding the repository's files. */}}
{{- define "ferrum.configMapName" -}}
{{- if .Values.modelRepository.configMap.create }}
{{- printf "%s-models" (include "ferrum.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "modelRepository.configMap.name is required when configMap.create is false" .Values.modelRepository.configMap.name }}
{{- end }}
{{- end }}

{{/* The Secret with the S3 credentials; empty when there are none. */}}
{{- define "ferrum.s3SecretName" -}}
{{- $credentials := .Values.modelRepository.s3.credentials }}
{{- if $credentials.create }}
{{- printf "%s-s3" (include "ferrum.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $credentials.existingSecret }}
{{- end }}
{{- end }}
