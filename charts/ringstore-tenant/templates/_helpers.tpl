{{/* Name of the Tenant: `name`, else the release name. */}}
{{- define "ringstore-tenant.name" -}}
{{- $name := default .Release.Name .Values.name }}
{{- if or (gt (len $name) 40) (not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name)) }}
{{- fail (printf "the Tenant name %q must be a DNS label of at most 40 characters starting with a letter: set `name`" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/*
Labels of the Tenant and the Pools. `app.kubernetes.io/instance` is left out on purpose: the
operator puts it (with the Tenant's name) on the objects it creates, and tools that track their
objects by that label (Argo CD's label tracking) would take those children for their own.
*/}}
{{- define "ringstore-tenant.labels" -}}
app.kubernetes.io/part-of: ringstore
{{- if .Values.helmLabels }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ringstore-tenant.annotations" -}}
{{- $annotations := dict }}
{{- if .Values.keepOnUninstall }}
{{- $_ := set $annotations "helm.sh/resource-policy" "keep" }}
{{- end }}
{{- $annotations = merge $annotations (.Values.commonAnnotations | default dict) }}
{{- with $annotations }}
{{- toYaml . }}
{{- end }}
{{- end }}
