{{/* Chart name, truncated to fit label values. */}}
{{- define "ringkv.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified release name: the release name, unless it already contains the chart name. */}}
{{- define "ringkv.fullname" -}}
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

{{- define "ringkv.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "ringkv.labels" -}}
helm.sh/chart: {{ include "ringkv.chart" . }}
app.kubernetes.io/name: {{ include "ringkv.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ringkv
{{- end -}}

{{/* The operator's pod selector: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "ringkv.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ringkv.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ringkv.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "ringkv.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The one image of node and operator: repository:tag, or repository@digest. */}}
{{- define "ringkv.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* A prometheus-operator namespaceSelector from values: matchNames, when given, wins over the default
     any: true (Helm merges the two maps, and prometheus-operator would let `any` win). */}}
{{- define "ringkv.namespaceSelector" -}}
{{- if .matchNames -}}
matchNames:
  {{- toYaml .matchNames | nindent 2 }}
{{- else -}}
{{- toYaml (omit . "matchNames") }}
{{- end -}}
{{- end -}}
