{{/* Names, labels and the agent's config.yaml, shared by the templates. */}}

{{- define "vmgpu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "vmgpu.fullname" -}}
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

{{- define "vmgpu.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "vmgpu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vmgpu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vmgpu.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "vmgpu.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vmgpu.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vmgpu.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vmgpu.configMapName" -}}
{{- default (printf "%s-config" (include "vmgpu.fullname" .)) .Values.config.name }}
{{- end }}

{{/* The agent's config.yaml: the chart's own values first, then config.extra over them. */}}
{{- define "vmgpu.configYaml" -}}
{{- $api := .Values.kubernetesApi }}
{{- $config := dict
  "socket" .Values.agentSocket
  "state_dir" .Values.stateDir
  "health_interval_s" .Values.healthIntervalSeconds
  "kubelet_dir" (printf "%s/device-plugins" .Values.kubeletDir)
  "pod_resources_socket" (printf "%s/pod-resources/kubelet.sock" .Values.kubeletDir)
  "resource_naming" .Values.resourceNaming.strategy
  "resource_name" .Values.resourceNaming.name
  "kube_enabled" (ternary "true" "false" $api.enabled)
  "events_namespace" $api.eventsNamespace
  "resource_slices" $api.resourceSlices
  "label_interval_s" $api.labelIntervalSeconds
  "log_format" .Values.config.logFormat
  "log_level" .Values.config.logLevel
}}
{{- with .Values.resourceNaming.aliases }}
{{- $_ := set $config "resource_aliases" . }}
{{- end }}
{{- with .Values.config.gpuFilter }}
{{- $_ := set $config "gpu_filter" . }}
{{- end }}
{{- toYaml (mergeOverwrite $config (deepCopy (.Values.config.extra | default dict))) }}
{{- end }}
