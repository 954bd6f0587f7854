{{/* Names and labels shared by every template. */}}

{{- define "podpost.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "podpost.selectorLabels" -}}
app.kubernetes.io/name: podpost
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "podpost.labels" -}}
{{ include "podpost.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "podpost.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end -}}

{{/* The NATS subchart's names, by its own rules (its _helpers.tpl "nats.fullname" and
"defaultValues"): fullnameOverride; else the release name when it contains the chart's
name (a release "nats-relay" gets Service "nats-relay"); else <release>-<name>. */}}
{{- define "podpost.natsName" -}}
{{- default "nats" .Values.nats.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "podpost.natsFullname" -}}
{{- if .Values.nats.fullnameOverride -}}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "nats" .Values.nats.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "podpost.natsService" -}}
{{- dig "service" "name" "" .Values.nats | default (include "podpost.natsFullname" .) -}}
{{- end -}}

{{- define "podpost.natsHeadlessService" -}}
{{- dig "headlessService" "name" "" .Values.nats | default (printf "%s-headless" (include "podpost.natsFullname" .)) -}}
{{- end -}}

{{- define "podpost.natsUrl" -}}
{{ default (printf "nats://%s:4222" (include "podpost.natsService" .)) .Values.bus.url }}
{{- end -}}

{{/* Environment every role shares: the bus, health endpoints, logs. */}}
{{- define "podpost.commonEnv" -}}
- name: PODPOST_NATS__URL
  value: {{ include "podpost.natsUrl" . | quote }}
- name: PODPOST_NATS__PREFIX
  value: {{ .Values.bus.prefix | quote }}
- name: PODPOST_NATS__REPLICAS
  value: {{ .Values.bus.replicas | quote }}
- name: PODPOST_HEALTH__PORT
  value: {{ .Values.health.port | quote }}
- name: PODPOST_LOG__FORMAT
  value: "json"
- name: PODPOST_LOG__LEVEL
  value: {{ .Values.log.level | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Probes and ports of the health/metrics endpoint every role serves. */}}
{{- define "podpost.probes" -}}
readinessProbe:
  httpGet:
    path: /readyz
    port: health
  periodSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: /healthz
    port: health
  initialDelaySeconds: 10
  periodSeconds: 10
  failureThreshold: 6
{{- end -}}

{{- define "podpost.podAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.health.port | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{/* A writable /tmp: the root filesystem is read-only. */}}
{{- define "podpost.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "podpost.natsSelectorLabels" -}}
app.kubernetes.io/name: {{ include "podpost.natsName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The NATS users' names, each between spaces, for the checks in validate.yaml. */}}
{{- define "podpost.natsUserNames" -}}
{{ range .Values.nats.config.merge.authorization.users }} {{ .user }} {{ end }}
{{- end -}}

{{/* Egress every role needs: DNS, and the NATS client port. */}}
{{- define "podpost.egressBus" -}}
- to:
    {{- required "networkPolicy.dns.to: where the cluster DNS is (NetworkPolicy peers)" .Values.networkPolicy.dns.to | toYaml | nindent 4 }}
  ports:
    {{- range .Values.networkPolicy.dns.ports }}
    - port: {{ . }}
      protocol: UDP
    - port: {{ . }}
      protocol: TCP
    {{- end }}
- to:
    {{- if .Values.nats.enabled }}
    - podSelector:
        matchLabels:
          {{- include "podpost.natsSelectorLabels" . | nindent 10 }}
    {{- else }}
    {{- toYaml .Values.networkPolicy.natsTo | nindent 4 }}
    {{- end }}
  ports:
    - port: 4222
      protocol: TCP
{{- end -}}
