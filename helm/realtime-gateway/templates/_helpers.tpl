{{/*
Names, labels, images and the environment shared by both components.
*/}}

{{- define "rg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rg.fullname" -}}
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

{{/* Component object names (room left for the "-headless" suffix). */}}
{{- define "rg.gateway.fullname" -}}
{{- printf "%s-gateway" (include "rg.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{- define "rg.bridge.fullname" -}}
{{- printf "%s-bridge" (include "rg.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{- define "rg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "ctx" $ "component" "gateway"|"bridge"|""). */}}
{{- define "rg.labels" -}}
helm.sh/chart: {{ include "rg.chart" .ctx }}
{{ include "rg.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: {{ include "rg.name" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; stable across upgrades. */}}
{{- define "rg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rg.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "rg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rg.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pods read: the operator's or the chart's. */}}
{{- define "rg.secretName" -}}
{{- default (include "rg.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* image reference; call with (dict "ctx" $ "image" .Values.gateway.image). */}}
{{- define "rg.image" -}}
{{- $repo := .image.repository }}
{{- with .ctx.Values.image.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* An env entry read from the Secret; call with (dict "ctx" $ "name" "JWT_SECRET" "key" "jwtSecret"). */}}
{{- define "rg.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "rg.secretName" .ctx }}
      key: {{ index .ctx.Values.secrets.keys .key | quote }}
{{- end }}

{{/* A plain env entry; call with (list "NAME" value). */}}
{{- define "rg.env" -}}
{{- $value := index . 1 -}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) -}}
{{- $value = int64 $value -}}
{{- end -}}
- name: {{ index . 0 }}
  value: {{ $value | toString | quote }}
{{- end }}

{{/* Variables both binaries read: LOG_FORMAT, REDIS_URL, NATS_* and OTEL_*; call with
(dict "ctx" $ "component" "gateway"|"bridge"): each logs in to NATS as its own user. */}}
{{- define "rg.sharedEnv" -}}
{{- $component := .component }}
{{- with .ctx }}
{{- $v := .Values }}
{{ include "rg.env" (list "LOG_FORMAT" $v.logFormat) }}
{{- if $v.redis.url }}
{{ include "rg.env" (list "REDIS_URL" $v.redis.url) }}
{{- else }}
{{ include "rg.secretEnv" (dict "ctx" . "name" "REDIS_URL" "key" "redisUrl") }}
{{- end }}
{{- include "rg.redisTlsEnv" . }}
{{ include "rg.env" (list "NATS_URL" $v.nats.url) }}
{{- $auth := $v.nats.auth }}
{{- if eq $auth.method "userPassword" }}
{{ include "rg.env" (list "NATS_USER" (index $auth $component).user) }}
{{ include "rg.secretEnv" (dict "ctx" . "name" "NATS_PASSWORD" "key" (printf "nats%sPassword" (title $component))) }}
{{- else if eq $auth.method "token" }}
{{ include "rg.secretEnv" (dict "ctx" . "name" "NATS_TOKEN" "key" "natsToken") }}
{{- else if eq $auth.method "credentials" }}
{{ include "rg.env" (list "NATS_CREDS_FILE" (printf "/etc/realtime-gateway/nats-creds/%s" $auth.credentialsKey)) }}
{{- else if eq $auth.method "none" }}
{{ include "rg.env" (list "NATS_ALLOW_ANONYMOUS" "true") }}
{{- end }}
{{- if or $v.nats.tls.ca.secretName $v.nats.tls.ca.configMapName }}
{{ include "rg.env" (list "NATS_TLS_CA_FILE" (printf "/etc/realtime-gateway/nats-ca/%s" $v.nats.tls.ca.key)) }}
{{- end }}
{{- if index $v.nats.tls.clientCert (printf "%sSecretName" $component) }}
{{ include "rg.env" (list "NATS_TLS_CERT_FILE" "/etc/realtime-gateway/nats-client/tls.crt") }}
{{ include "rg.env" (list "NATS_TLS_KEY_FILE" "/etc/realtime-gateway/nats-client/tls.key") }}
{{- end }}
{{- if $v.nats.tls.required }}
{{ include "rg.env" (list "NATS_TLS_REQUIRED" "true") }}
{{- end }}
{{- include "rg.otelEnv" . }}
{{- end }}
{{- end }}

{{/* REDIS_TLS_*: the files of redis.tls, mounted by rg.volumes. */}}
{{- define "rg.redisTlsEnv" -}}
{{- $tls := .Values.redis.tls }}
{{- if or $tls.ca.secretName $tls.ca.configMapName }}
{{ include "rg.env" (list "REDIS_TLS_CA_FILE" (printf "/etc/realtime-gateway/redis-ca/%s" $tls.ca.key)) }}
{{- end }}
{{- if $tls.clientCert.secretName }}
{{ include "rg.env" (list "REDIS_TLS_CERT_FILE" "/etc/realtime-gateway/redis-client/tls.crt") }}
{{ include "rg.env" (list "REDIS_TLS_KEY_FILE" "/etc/realtime-gateway/redis-client/tls.key") }}
{{- end }}
{{- end }}

{{/* OTEL_* when otel.endpoint is set; nothing otherwise (export off). */}}
{{- define "rg.otelEnv" -}}
{{- $o := .Values.otel }}
{{- if $o.endpoint }}
{{ include "rg.env" (list "OTEL_EXPORTER_OTLP_ENDPOINT" $o.endpoint) }}
{{ include "rg.env" (list "OTEL_EXPORTER_OTLP_PROTOCOL" $o.protocol) }}
{{- if or $o.tls.ca.secretName $o.tls.ca.configMapName }}
{{ include "rg.env" (list "OTEL_EXPORTER_OTLP_CERTIFICATE" (printf "/etc/realtime-gateway/otel-ca/%s" $o.tls.ca.key)) }}
{{- end }}
{{- if $o.tls.clientCert.secretName }}
{{ include "rg.env" (list "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" "/etc/realtime-gateway/otel-client/tls.crt") }}
{{ include "rg.env" (list "OTEL_EXPORTER_OTLP_CLIENT_KEY" "/etc/realtime-gateway/otel-client/tls.key") }}
{{- end }}
{{ include "rg.env" (list "OTEL_TRACES_SAMPLER" $o.sampler) }}
{{ include "rg.env" (list "OTEL_TRACES_SAMPLER_ARG" $o.samplerArg) }}
{{- $attributes := list (printf "k8s.namespace.name=%s" .Release.Namespace) }}
{{- range $key := keys $o.resourceAttributes | sortAlpha }}
{{- $attributes = append $attributes (printf "%s=%s" $key (index $o.resourceAttributes $key | toString | urlquery)) }}
{{- end }}
{{ include "rg.env" (list "OTEL_RESOURCE_ATTRIBUTES" (join "," $attributes)) }}
{{- if $o.headersFromSecret }}
{{ include "rg.secretEnv" (dict "ctx" . "name" "OTEL_EXPORTER_OTLP_HEADERS" "key" "otelHeaders") }}
{{- end }}
{{- end }}
{{- end }}

{{/* The TCP port of otel.endpoint (80 for http://, 443 for https:// when the URL names none). */}}
{{- define "rg.otelPort" -}}
{{- $endpoint := .Values.otel.endpoint }}
{{- $port := regexFind ":[0-9]+" (regexReplaceAll "^https?://" $endpoint "") | trimPrefix ":" }}
{{- default (ternary "443" "80" (hasPrefix "https://" $endpoint)) $port }}
{{- end }}

{{/* `env` map entries, sorted by name. */}}
{{- define "rg.envMap" -}}
{{- range $name := keys . | sortAlpha }}
{{ include "rg.env" (list $name (index $ $name)) }}
{{- end }}
{{- end }}

{{/* Volumes for the NATS, Redis and OTLP files (credentials, CA bundles, client certificates) and a
writable /tmp (the root filesystem is read-only); call with (dict "ctx" $ "component"
"gateway"|"bridge"). Every file is mounted read-only; private keys and .creds files 0440 (the
pods' fsGroup reads them), CA bundles 0444. */}}
{{- define "rg.volumes" -}}
{{- $component := .component }}
{{- with .ctx }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- $nats := .Values.nats }}
{{- if eq $nats.auth.method "credentials" }}
- name: nats-creds
  secret:
    secretName: {{ (index $nats.auth $component).credentialsSecret }}
    defaultMode: 0440
    items:
      - key: {{ $nats.auth.credentialsKey | quote }}
        path: {{ $nats.auth.credentialsKey | quote }}
{{- end }}
{{- include "rg.caVolume" (dict "name" "nats-ca" "ca" $nats.tls.ca) }}
{{- include "rg.clientCertVolume" (dict "name" "nats-client" "secretName" (index $nats.tls.clientCert (printf "%sSecretName" $component)) "cert" $nats.tls.clientCert) }}
{{- include "rg.caVolume" (dict "name" "redis-ca" "ca" .Values.redis.tls.ca) }}
{{- include "rg.clientCertVolume" (dict "name" "redis-client" "secretName" .Values.redis.tls.clientCert.secretName "cert" .Values.redis.tls.clientCert) }}
{{- if .Values.otel.endpoint }}
{{- include "rg.caVolume" (dict "name" "otel-ca" "ca" .Values.otel.tls.ca) }}
{{- include "rg.clientCertVolume" (dict "name" "otel-client" "secretName" .Values.otel.tls.clientCert.secretName "cert" .Values.otel.tls.clientCert) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A CA bundle from a Secret or a ConfigMap, the file named as its key; nothing when neither is
set. Call with (dict "name" "nats-ca" "ca" .Values.nats.tls.ca). */}}
{{- define "rg.caVolume" -}}
{{- if .ca.secretName }}
- name: {{ .name }}
  secret:
    secretName: {{ .ca.secretName }}
    defaultMode: 0444
    items:
      - key: {{ .ca.key | quote }}
        path: {{ .ca.key | quote }}
{{- else if .ca.configMapName }}
- name: {{ .name }}
  configMap:
    name: {{ .ca.configMapName }}
    defaultMode: 0444
    items:
      - key: {{ .ca.key | quote }}
        path: {{ .ca.key | quote }}
{{- end }}
{{- end }}

{{/* A client certificate and its key from one Secret, as tls.crt and tls.key whatever their keys;
nothing without a Secret. Call with (dict "name" "redis-client" "secretName" ... "cert" <the
clientCert values: certKey, keyKey>). */}}
{{- define "rg.clientCertVolume" -}}
{{- if .secretName }}
- name: {{ .name }}
  secret:
    secretName: {{ .secretName }}
    defaultMode: 0440
    items:
      - key: {{ .cert.certKey | quote }}
        path: tls.crt
      - key: {{ .cert.keyKey | quote }}
        path: tls.key
{{- end }}
{{- end }}

{{/* Mounts of rg.volumes, under /etc/realtime-gateway/<volume>; call with (dict "ctx" $
"component" "gateway"|"bridge"). */}}
{{- define "rg.volumeMounts" -}}
{{- $component := .component }}
{{- with .ctx }}
- name: tmp
  mountPath: /tmp
{{- $nats := .Values.nats }}
{{- $redis := .Values.redis.tls }}
{{- $otel := .Values.otel }}
{{- $mounted := dict
  "nats-creds" (eq $nats.auth.method "credentials")
  "nats-ca" (or $nats.tls.ca.secretName $nats.tls.ca.configMapName)
  "nats-client" (index $nats.tls.clientCert (printf "%sSecretName" $component))
  "redis-ca" (or $redis.ca.secretName $redis.ca.configMapName)
  "redis-client" $redis.clientCert.secretName
  "otel-ca" (and $otel.endpoint (or $otel.tls.ca.secretName $otel.tls.ca.configMapName))
  "otel-client" (and $otel.endpoint $otel.tls.clientCert.secretName) }}
{{- range $name := list "nats-creds" "nats-ca" "nats-client" "redis-ca" "redis-client" "otel-ca" "otel-client" }}
{{- if index $mounted $name }}
- name: {{ $name }}
  mountPath: /etc/realtime-gateway/{{ $name }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* topologySpreadConstraints with the component's labelSelector added where missing. */}}
{{- define "rg.topologySpread" -}}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "rg.selectorLabels" (dict "ctx" $.ctx "component" $.component) | fromYaml)) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/* The gateway pod's grace period: preStop + shutdown timeout + 5 s unless set. */}}
{{- define "rg.gateway.grace" -}}
{{- $g := .Values.gateway }}
{{- if kindIs "invalid" $g.terminationGracePeriodSeconds }}
{{- add $g.preStopSleepSeconds $g.shutdownTimeoutSeconds 5 }}
{{- else }}
{{- $g.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The bridge pod's grace period: shutdown timeout + 10 s unless set (the bridge has no preStop:
it takes no client traffic). */}}
{{- define "rg.bridge.grace" -}}
{{- $b := .Values.bridge }}
{{- if kindIs "invalid" $b.terminationGracePeriodSeconds }}
{{- add $b.shutdownTimeoutSeconds 10 }}
{{- else }}
{{- $b.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}
