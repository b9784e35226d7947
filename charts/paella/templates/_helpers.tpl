{{/* Names: <release>-paella unless the release name already contains the chart's name. */}}
{{- define "paella.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "paella.fullname" -}}
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

{{/* "<fullname>-<component>", kept within the 63 characters of a DNS label. */}}
{{- define "paella.componentName" -}}
{{- printf "%s-%s" (include "paella.fullname" .root | trunc 52 | trimSuffix "-") .component }}
{{- end }}

{{- define "paella.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "paella.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paella
{{- end }}

{{/* Selector labels of one component: {root, component}. Never change them after a release:
     a Deployment's selector is immutable. */}}
{{- define "paella.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paella.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "paella.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paella.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "paella.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Whether a component's credentials come from a Secret managed outside the chart
     (sealed-secrets, external-secrets, ...): {root, component}. */}}
{{- define "paella.externalSecret" -}}
{{- $s := .root.Values.secrets }}
{{- if or (index $s .component).existingSecret $s.existingSecret }}true{{ end }}
{{- end }}

{{/* The Secret a component's pods read credentials from: {root, component}. The scheduler's
     holds the API key hashes, the workers' the S3 credentials, both the Redis password, so
     neither side receives the other's. secrets.<component>.existingSecret wins over the
     shared secrets.existingSecret (one Secret for both, as before the split), which wins
     over the chart's own <fullname>-<component>. */}}
{{- define "paella.secretName" -}}
{{- $s := .root.Values.secrets }}
{{- coalesce (index $s .component).existingSecret $s.existingSecret (include "paella.componentName" .) }}
{{- end }}

{{- define "paella.webhookSecretName" -}}
{{- default (include "paella.componentName" (dict "root" . "component" "webhooks")) .Values.webhooks.existingSecret }}
{{- end }}

{{- define "paella.webhooksEnabled" -}}
{{- if or .Values.webhooks.existingSecret .Values.webhooks.secrets }}true{{ end }}
{{- end }}

{{/* Whether a component authenticates to Redis: {root, component}. A Secret of the user's
     may hold `redis-password`; the chart's own holds queue.redis.password. */}}
{{- define "paella.redisAuth" -}}
{{- if or .root.Values.queue.redis.password (include "paella.externalSecret" .) }}true{{ end }}
{{- end }}

{{/* A setting's value as the binaries read it. Helm holds YAML numbers as float64, which
     print as 1e+06 from a million on: integers are printed as integers. */}}
{{- define "paella.scalar" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}{{ int64 . }}
{{- else }}{{ . }}
{{- end }}
{{- end }}

{{/* host:port of the job Redis: the chart's own (redis.enabled, which then replaces
     queue.redis.address) or the one queue.redis.address names. */}}
{{- define "paella.redisAddress" -}}
{{- if .Values.redis.enabled }}
{{- printf "%s:6379" (include "paella.componentName" (dict "root" . "component" "redis")) }}
{{- else }}
{{- required "queue.redis.address is required" .Values.queue.redis.address }}
{{- end }}
{{- end }}

{{/* The queue URL of docs/queues.md: {root, component}. The Redis password is not written
     here: it comes from the Secret as $(PAELLA_REDIS_PASSWORD), which Kubernetes expands in
     env values. */}}
{{- define "paella.queueURL" -}}
{{- $q := .root.Values.queue }}
{{- if eq $q.type "kafka" }}
{{- printf "kafka://%s?topic=%s&group=%s" (required "queue.kafka.brokers is required with queue.type=kafka" $q.kafka.brokers) $q.kafka.topic $q.kafka.group }}
{{- else }}
{{- $auth := ternary ":$(PAELLA_REDIS_PASSWORD)@" "" (eq (include "paella.redisAuth" .) "true") }}
{{- $tls := default dict $q.redis.tls }}
{{- if and $tls.enabled .root.Values.redis.enabled }}
{{- fail "queue.redis.tls.enabled with redis.enabled: the chart's own Redis has no TLS" }}
{{- end }}
{{- $tlsq := "" }}
{{- if and $tls.enabled $tls.caSecret }}{{ $tlsq = printf "%s&tls_ca=%s/ca.crt" $tlsq (include "paella.redisCADir" .) }}{{ end }}
{{- if and $tls.enabled $tls.insecure }}{{ $tlsq = printf "%s&tls_insecure=1" $tlsq }}{{ end }}
{{- printf "%s://%s%s/%s?stream=%s&group=%s%s" (ternary "rediss" "redis" (eq (toString $tls.enabled) "true")) $auth (include "paella.redisAddress" .root) (include "paella.scalar" $q.redis.db) $q.redis.stream $q.redis.group $tlsq }}
{{- end }}
{{- end }}

{{/* Where the Redis CA Secret (queue.redis.tls.caSecret, key ca.crt) is mounted. */}}
{{- define "paella.redisCADir" -}}
/etc/paella/redis-ca
{{- end }}

{{/* The Redis CA mount and volume of a Deployment: {root, part} with part "mount" or "volume";
     empty unless queue.redis.tls.enabled with a caSecret. */}}
{{- define "paella.redisCA" -}}
{{- $q := .root.Values.queue }}
{{- $tls := default dict $q.redis.tls }}
{{- if and (eq $q.type "redis") $tls.enabled $tls.caSecret }}
{{- if eq .part "mount" }}
- name: redis-ca
  mountPath: {{ include "paella.redisCADir" . }}
  readOnly: true
{{- else }}
- name: redis-ca
  secret:
    secretName: {{ $tls.caSecret }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/* The Redis password as an env var, for the queue URL's $(PAELLA_REDIS_PASSWORD):
     {root, component}. */}}
{{- define "paella.redisPasswordEnv" -}}
{{- if eq (include "paella.redisAuth" .) "true" }}
- name: PAELLA_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "paella.secretName" . }}
      key: redis-password
      {{- if include "paella.externalSecret" . }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}

{{/* Settings passed as flags because `paella-scheduler --help` names no PAELLA_* variable
     for them; everything else in scheduler.config goes into the ConfigMap as
     PAELLA_<SNAKE_CASE>. tests/deploy/check.sh fails when this list and --help disagree. */}}
{{- define "paella.scheduler.flagOnly" -}}
maxBody maxBatchBody maxWait maxAttempts backoffMs jobTimeout shardSize maxConnections maxPerIp idleTimeout redisTimeoutMs
{{- end }}
{{- define "paella.worker.flagOnly" -}}
once
{{- end }}

{{/* ConfigMap data from a config map of settings: {config, flagOnly}. */}}
{{- define "paella.configEnv" -}}
{{- $flagOnly := splitList " " .flagOnly }}
{{- range $key, $value := .config }}
{{- if and (not (kindIs "invalid" $value)) (not (has $key $flagOnly)) }}
PAELLA_{{ snakecase $key | upper }}: {{ include "paella.scalar" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Container args for the flag-only settings: {config, flagOnly}. Booleans are bare flags. */}}
{{- define "paella.configArgs" -}}
{{- $flagOnly := splitList " " .flagOnly }}
{{- range $key, $value := .config }}
{{- if and (not (kindIs "invalid" $value)) (has $key $flagOnly) }}
{{- if kindIs "bool" $value }}
{{- if $value }}
- --{{ kebabcase $key }}
{{- end }}
{{- else }}
- --{{ kebabcase $key }}={{ include "paella.scalar" $value }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "paella.terminationGracePeriodSeconds" -}}
{{- $w := .Values.worker }}
{{- $grace := default (add (int64 $w.longestJobSeconds) 60) $w.terminationGracePeriodSeconds | int64 }}
{{- if le $grace (int64 $w.longestJobSeconds) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must exceed worker.longestJobSeconds (%d): a stopping worker finishes its batch first" $grace (int64 $w.longestJobSeconds)) }}
{{- end }}
{{- $grace }}
{{- end }}

{{/* One component's Secret of the chart's own: {ctx: {root, component}, data}. */}}
{{- define "paella.secret" -}}
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "paella.secretName" .ctx }}
  labels:
    {{- include "paella.labels" .ctx.root | nindent 4 }}
    app.kubernetes.io/component: {{ .ctx.component }}
type: Opaque
stringData:
  {{- range $key, $value := .data }}
  {{ $key }}: {{ $value | quote }}
  {{- end }}
{{- end }}

{{/* Pod-spec fields both Deployments take from their values the same way: {root, component}.
     A topology spread constraint without a labelSelector spreads the component's own pods,
     which is what one almost always means and is easy to get wrong by hand. */}}
{{- define "paella.podScheduling" -}}
{{- $v := index .root.Values .component }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
{{- $own := include "paella.selectorLabels" . | fromYaml }}
{{- $constraints := list }}
{{- range $v.topologySpreadConstraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $own) }}
{{- end }}
{{- $constraints = append $constraints $c }}
{{- end }}
topologySpreadConstraints:
  {{- toYaml $constraints | nindent 2 }}
{{- end }}
{{- end }}
