{{/* Name of the chart, or nameOverride. */}}
{{- define "ringstore-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the objects: the release name when it already contains the chart name (the usual
`helm install ringstore-operator ...`), else "<release>-<chart>".
*/}}
{{- define "ringstore-operator.fullname" -}}
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

{{/* Labels that select the operator's Pods; never change them (selectors are immutable). */}}
{{- define "ringstore-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ringstore-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "ringstore-operator.labels" -}}
{{ include "ringstore-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: ringstore
{{- if .Values.helmLabels }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ringstore-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ringstore-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ringstore-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Refuse combinations that cannot work, with a message saying what to change. */}}
{{- define "ringstore-operator.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: replicas without a leader would reconcile the same Tenants at once" }}
{{- end }}
{{- if not (has .Values.logFormat (list "json" "text")) }}
{{- fail (printf "logFormat must be json or text, not %q" .Values.logFormat) }}
{{- end }}
{{- end }}

{{/*
What the operator reads and writes, and nothing more. It applies its children with server-side
apply (patch, and create for the first apply), creates the generated Secrets once and never
updates them, deletes Pods one at a time during a rolling upgrade and writes only the status of
Tenants and Pools. Keep this in step with operator/src/controller.rs.
*/}}
{{- define "ringstore-operator.rules" -}}
- apiGroups: ["ringstore.io"]
  resources: ["tenants"]
  verbs: ["get", "list", "watch"]
# patch: the finalizer that holds a deleted Pool until its data has moved away
- apiGroups: ["ringstore.io"]
  resources: ["pools"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["ringstore.io"]
  resources: ["tenants/status", "pools/status"]
  verbs: ["get", "patch", "update"]
# delete: the StatefulSet of a decommissioned pool, once drained
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
# delete: the volumes of drained servers (unless a Pool's volumeReclaimPolicy is Retain)
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
