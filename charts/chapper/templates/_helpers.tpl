{{/* Names, labels and the pieces every pod shares. */}}

{{- define "chapper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chapper.fullname" -}}
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

{{- define "chapper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "chapper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chapper
{{- end -}}

{{/* chapper.selector: labels selecting the pods of one target; call with (dict "root" $ "target" "ingest"). */}}
{{- define "chapper.selector" -}}
app.kubernetes.io/name: {{ include "chapper.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .target }}
{{- end -}}

{{- define "chapper.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "chapper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chapper.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret with router-url, redis-password and search-api-key. */}}
{{- define "chapper.storesSecret" -}}
{{- default (printf "%s-stores" (include "chapper.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "chapper.authSecret" -}}
{{- default (printf "%s-auth" (include "chapper.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Environment from the stores Secret: flags as CHAPPER_* variables, so no credential is in args. */}}
{{- define "chapper.storeEnv" -}}
- name: CHAPPER_PERSIST_ROUTER_URL
  valueFrom: {secretKeyRef: {name: {{ include "chapper.storesSecret" . }}, key: router-url, optional: true}}
- name: CHAPPER_MIGRATE_ROUTER_URL
  valueFrom: {secretKeyRef: {name: {{ include "chapper.storesSecret" . }}, key: router-url, optional: true}}
- name: CHAPPER_TIMELINE_REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "chapper.storesSecret" . }}, key: redis-password, optional: true}}
- name: CHAPPER_QUERY_REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "chapper.storesSecret" . }}, key: redis-password, optional: true}}
- name: CHAPPER_SEARCH_API_KEY
  valueFrom: {secretKeyRef: {name: {{ include "chapper.storesSecret" . }}, key: search-api-key, optional: true}}
{{- end -}}

{{/* chapper.serveArgs: the `chapper serve` flags of one target; call with (dict "root" $ "target" "ingest"). */}}
{{- define "chapper.serveArgs" -}}
{{- $v := .root.Values -}}
{{- $t := index $v.targets .target -}}
- serve
- -target={{ .target }}
- -kafka.brokers={{ join "," $v.kafka.brokers }}
- -log.level={{ $v.log.level }}
- -log.format={{ $v.log.format }}
- -grpc.addr=:{{ $v.service.grpcPort }}
- -admin.addr=:{{ $v.service.adminPort }}
{{- if eq .target "ingest" }}
- -ingest.topic-partitions={{ $v.kafka.topicPartitions }}
- -ingest.topic-replication-factor={{ $v.kafka.topicReplicationFactor }}
{{- end }}
{{- if or (eq .target "ingest") (eq .target "query") }}
- -auth={{ ternary "on" "off" $v.auth.enabled }}
{{- if $v.auth.enabled }}
- -auth.keys-dir=/etc/chapper/auth
{{- end }}
{{- if $v.corsOrigins }}
- -grpc.cors-origins={{ join "," $v.corsOrigins }}
{{- end }}
{{- range $v.auth.args }}
- {{ . }}
{{- end }}
{{- end }}
{{- if eq .target "query" }}
- -query.redis-addrs={{ join "," $v.redis.addrs }}
- -query.key-prefix={{ $v.redis.keyPrefix }}
{{- end }}
{{- if eq .target "timeline" }}
- -timeline.redis-addrs={{ join "," $v.redis.addrs }}
- -timeline.key-prefix={{ $v.redis.keyPrefix }}
{{- end }}
{{- if eq .target "persist" }}
- -persist.shard-bits={{ $v.postgres.shardBits }}
- -persist.pool-size={{ $v.postgres.poolSize }}
{{- end }}
{{- if eq .target "search" }}
- -search.addresses={{ join "," $v.elasticsearch.addresses }}
- -search.index-prefix={{ $v.elasticsearch.indexPrefix }}
- -search.shard-bits={{ $v.postgres.shardBits }}
{{- if $v.elasticsearch.caSecret }}
- -search.ca-cert=/etc/chapper/es-ca/ca.crt
{{- end }}
{{- end }}
{{- range $t.extraArgs }}
- {{ . }}
{{- end }}
{{- end -}}
