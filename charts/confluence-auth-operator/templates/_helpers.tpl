{{/* Chart name. */}}
{{- define "cao.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the objects: the release name when it already contains the chart name. */}}
{{- define "cao.fullname" -}}
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

{{/* Labels every object carries. */}}
{{- define "cao.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "cao.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: confluence-auth
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "cao.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cao.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "cao.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cao.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image. */}}
{{- define "cao.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the Dockerfile puts the binary (a test checks both agree). */}}
{{- define "cao.binary" -}}
/usr/local/bin/confluence-auth-operator
{{- end }}

{{/* Rules on the two custom resources, their status and the Secrets the operator writes. */}}
{{- define "cao.workloadRules" -}}
- apiGroups: ["confluence-auth.dev"]
  resources: ["confluenceinstallations", "confluenceuserauths"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["confluence-auth.dev"]
  resources: ["confluenceinstallations/status", "confluenceuserauths/status"]
  verbs: ["get", "update", "patch"]
# Vault and token Secrets (written), app client secrets (read).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
