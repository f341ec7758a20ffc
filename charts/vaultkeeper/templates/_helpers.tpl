{{/* Names and labels shared by every object of the chart. */}}

{{- define "vaultkeeper.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains "vaultkeeper" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-vaultkeeper" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vaultkeeper.labels" -}}
app.kubernetes.io/part-of: vaultkeeper
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "vaultkeeper.operator.name" -}}
{{- printf "%s-operator" (include "vaultkeeper.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vaultkeeper.operator.selector" -}}
app.kubernetes.io/name: vaultkeeper-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vaultkeeper.webhook.name" -}}
{{- printf "%s-webhook" (include "vaultkeeper.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vaultkeeper.webhook.selector" -}}
app.kubernetes.io/name: vaultkeeper-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vaultkeeper.webhook.tlsSecret" -}}
{{- .Values.webhook.tls.secretName | default (printf "%s-tls" (include "vaultkeeper.webhook.name" .)) -}}
{{- end -}}

{{- define "vaultkeeper.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- if $registry -}}{{ printf "%s/%s:%s" $registry .image.repository $tag }}{{- else -}}{{ printf "%s:%s" .image.repository $tag }}{{- end -}}
{{- end -}}

{{/* Pod and container security settings every component runs with. */}}
{{- define "vaultkeeper.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "vaultkeeper.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The operator's rules in the namespaces it watches (a ClusterRole, or a Role in each). */}}
{{- define "vaultkeeper.operator.rules" -}}
- apiGroups: [vaultkeeper.dev]
  resources: [vaultsecrets, dynamiccredentials, certificaterequests]
  verbs: [get, list, watch, patch, update]
- apiGroups: [vaultkeeper.dev]
  resources: [vaultsecrets/status, dynamiccredentials/status, certificaterequests/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
