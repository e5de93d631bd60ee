{{/*
Names, labels and the shared pod pieces of stream-vae.
*/}}

{{- define "stream-vae.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stream-vae.fullname" -}}
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

{{- define "stream-vae.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stream-vae.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stream-vae.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stream-vae.labels" -}}
helm.sh/chart: {{ include "stream-vae.chart" . }}
{{ include "stream-vae.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stream-vae
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "stream-vae.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "stream-vae.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stream-vae.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "stream-vae.topologiesConfigMap" -}}
{{- printf "%s-topologies" (include "stream-vae.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Directory the topologies ConfigMap is mounted at (also STREAM_VAE_TOPOLOGY_DIR). */}}
{{- define "stream-vae.topologyDir" -}}/etc/stream-vae/topologies{{- end -}}

{{/* Fixed paths of the private CA bundles (kafka.tls.caSecret, redis.tls.caSecret). */}}
{{- define "stream-vae.kafkaCaDir" -}}/etc/stream-vae/kafka-ca{{- end -}}
{{- define "stream-vae.redisCaDir" -}}/etc/stream-vae/redis-ca{{- end -}}
{{- define "stream-vae.kafkaCaFile" -}}{{ include "stream-vae.kafkaCaDir" . }}/ca.crt{{- end -}}
{{- define "stream-vae.redisCaFile" -}}{{ include "stream-vae.redisCaDir" . }}/ca.crt{{- end -}}

{{/*
A number as a plain string: values files give helm float64s, which toString writes in scientific
notation from 1e6 on (1048576 -> "1.048576e+06", which an int setting or KEDA refuses). Whole numbers
render as integers, others (2.5) unchanged, strings as they are. Argument: the value.
*/}}
{{- define "stream-vae.num" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{ int64 . }}{{- else -}}{{ toString . }}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
The Redis URL the pods get: redis.url, plus `ssl_ca_certs=<mounted CA>` when redis.tls.caSecret is set
and the URL does not name a CA file itself (redis-py reads ssl_ca_certs from the URL's query).
*/}}
{{- define "stream-vae.redisUrl" -}}
{{- $url := .Values.redis.url -}}
{{- if and (dig "tls" "caSecret" "" .Values.redis) (not (regexMatch "[?&]ssl_ca_certs=" $url)) -}}
{{- $url = printf "%s%sssl_ca_certs=%s" $url (ternary "&" "?" (contains "?" $url)) (include "stream-vae.redisCaFile" .) -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{/*
The enabled topologies, checked and resolved, as a JSON object {"items": [...]}, sorted by name.
Each item: name, slug (DNS-safe), file, partitions, replicas, maxReplicas, resources, inputTopic,
consumerGroup, keyField, timestampField, features, anomalyTopic, driftTopic, dlqTopic, text. Fails with a message naming the topology
when its YAML is unreadable or disagrees with the values, or when two topologies get one slug or worker name.
*/}}
{{- define "stream-vae.topologies" -}}
{{- $items := list -}}
{{- range $key := keys .Values.topologies | sortAlpha -}}
{{- $t := get $.Values.topologies $key -}}
{{- if and $t (ne (toString (dig "enabled" true $t)) "false") -}}
{{- if not $t.topology -}}
{{- fail (printf "topologies.%s.topology: the topology YAML text is required" $key) -}}
{{- end -}}
{{- $doc := fromYaml $t.topology -}}
{{- if hasKey $doc "Error" -}}
{{- fail (printf "topologies.%s.topology: not valid YAML: %s" $key (get $doc "Error")) -}}
{{- end -}}
{{- if ne (toString (get $doc "name")) $key -}}
{{- fail (printf "topologies.%s.topology: `name:` is %q but must equal the values key %q (it names the consumer group stream-vae.<name>)" $key (toString (get $doc "name")) $key) -}}
{{- end -}}
{{- if not (get $doc "input_topic") -}}
{{- fail (printf "topologies.%s.topology: `input_topic:` is required" $key) -}}
{{- end -}}
{{- $partitions := int (default (default 4 (get $doc "partitions")) $t.partitions) -}}
{{- if and (hasKey $doc "partitions") (ne (int (get $doc "partitions")) $partitions) -}}
{{- fail (printf "topologies.%s: partitions is %d but the topology YAML says partitions: %d; make them agree" $key $partitions (int (get $doc "partitions"))) -}}
{{- end -}}
{{- $replicas := int (ternary $.Values.worker.replicaCount $t.replicaCount (kindIs "invalid" $t.replicaCount)) -}}
{{- if kindIs "invalid" $t.replicaCount -}}
{{- $replicas = min $replicas $partitions | int -}}
{{- end -}}
{{- if gt $replicas $partitions -}}
{{- fail (printf "topologies.%s.replicaCount (%d) is above its partitions (%d): extra consumers would sit idle" $key $replicas $partitions) -}}
{{- end -}}
{{- $max := $partitions -}}
{{- if not (kindIs "invalid" $t.maxReplicas) -}}
{{- $max = int $t.maxReplicas -}}
{{- else if and $.Values.worker.keda.enabled (not (kindIs "invalid" $.Values.worker.keda.maxReplicaCount)) -}}
{{- $max = min (int $.Values.worker.keda.maxReplicaCount) $partitions | int -}}
{{- else if and $.Values.worker.autoscaling.enabled (not (kindIs "invalid" $.Values.worker.autoscaling.maxReplicas)) -}}
{{- $max = min (int $.Values.worker.autoscaling.maxReplicas) $partitions | int -}}
{{- end -}}
{{- if gt $max $partitions -}}
{{- fail (printf "topologies.%s.maxReplicas (%d) is above its partitions (%d): extra consumers would sit idle" $key $max $partitions) -}}
{{- end -}}
{{- $alerts := default dict (get $doc "alerts") -}}
{{- $features := list -}}
{{- $examples := list -}}{{- /* a value of each feature's type: a worker dead-letters a bool sent as 1.0 */ -}}
{{- range $f := (default list (get $doc "features")) -}}
{{- if kindIs "map" $f -}}
{{- $features = append $features (toString (get $f "name")) -}}
{{- $type := toString (default "float" (get $f "type")) -}}
{{- $examples = append $examples (ternary "true" (ternary "1" "1.0" (eq $type "int")) (eq $type "bool")) -}}
{{- end -}}
{{- end -}}
{{- $slug := regexReplaceAll "[^a-z0-9-]+" $key "-" | trunc 40 | trimSuffix "-" -}}
{{- $workerName := printf "%s-worker-%s" (include "stream-vae.fullname" $) $slug | trunc 63 | trimSuffix "-" -}}
{{- range $other := $items -}}
{{- if eq $other.slug $slug -}}
{{- fail (printf "topologies.%s and topologies.%s both map to the Kubernetes name suffix %q (names are lower-cased to [a-z0-9-] and cut at 40 characters): their Deployments, PDBs and pod selectors would collide; rename one of them" $other.name $key $slug) -}}
{{- end -}}
{{- if eq (include "stream-vae.workerName" (list $ $other)) $workerName -}}
{{- fail (printf "topologies.%s and topologies.%s both get the worker Deployment name %q (cut at 63 characters): shorten the release name / fullnameOverride or rename one of them" $other.name $key $workerName) -}}
{{- end -}}
{{- end -}}
{{- $item := dict
      "name" $key
      "slug" $slug
      "file" (printf "%s.yaml" $key)
      "partitions" $partitions
      "replicas" $replicas
      "maxReplicas" $max
      "resources" (default $.Values.worker.resources $t.resources)
      "inputTopic" (toString (get $doc "input_topic"))
      "keyField" (toString (default "" (get $doc "key_field")))
      "timestampField" (toString (default "" (get $doc "timestamp_field")))
      "features" $features
      "exampleValues" $examples
      "consumerGroup" (printf "stream-vae.%s" $key)
      "anomalyTopic" (toString (default "alerts.anomaly" (get $alerts "anomaly_topic")))
      "driftTopic" (toString (default "alerts.drift" (get $alerts "drift_topic")))
      "dlqTopic" (toString (default "stream-vae.dlq" (get $alerts "dlq_topic")))
      "text" $t.topology -}}
{{- $items = append $items $item -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "items" $items) -}}
{{- end -}}

{{/* Name of one worker Deployment (and of its HPA / ScaledObject / PDB). Argument: (list $ $item). */}}
{{- define "stream-vae.workerName" -}}
{{- $ := index . 0 -}}{{- $item := index . 1 -}}
{{- printf "%s-worker-%s" (include "stream-vae.fullname" $) $item.slug | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stream-vae.trainerName" -}}
{{- printf "%s-trainer" (include "stream-vae.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Environment shared by workers and the trainer. Every name is a field of
stream_vae.config.Settings (prefix STREAM_VAE_, nested delimiter "__"); secrets come only from
secretKeyRef.
*/}}
{{- define "stream-vae.env" -}}
- name: STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: STREAM_VAE_KAFKA__SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.clientId }}
- name: STREAM_VAE_KAFKA__CLIENT_ID
  value: {{ . | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.kafka.sessionTimeoutMs) }}
- name: STREAM_VAE_KAFKA__SESSION_TIMEOUT_MS
  value: {{ .Values.kafka.sessionTimeoutMs | int | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.kafka.rebalanceTimeoutMs) }}
- name: STREAM_VAE_KAFKA__REBALANCE_TIMEOUT_MS
  value: {{ .Values.kafka.rebalanceTimeoutMs | int | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.kafka.replicationFactor) }}
- name: STREAM_VAE_KAFKA__REPLICATION_FACTOR
  value: {{ .Values.kafka.replicationFactor | int | quote }}
{{- end }}
{{- if dig "tls" "caSecret" "" .Values.kafka }}
- name: STREAM_VAE_KAFKA__SSL_CAFILE
  value: {{ include "stream-vae.kafkaCaFile" . | quote }}
{{- end }}
{{- if .Values.kafka.sasl.mechanism }}
- name: STREAM_VAE_KAFKA__SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: STREAM_VAE_KAFKA__SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
- name: STREAM_VAE_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret | quote }}
      key: {{ .Values.kafka.sasl.passwordKey | quote }}
{{- end }}
- name: STREAM_VAE_REDIS__URL
  value: {{ include "stream-vae.redisUrl" . | quote }}
{{- with .Values.redis.prefix }}
- name: STREAM_VAE_REDIS__PREFIX
  value: {{ . | quote }}
{{- end }}
{{- if .Values.redis.existingSecret }}
- name: STREAM_VAE_REDIS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret | quote }}
      key: {{ .Values.redis.passwordKey | quote }}
{{- end }}
{{- if .Values.modelSigning.existingSecret }}
- name: STREAM_VAE_MODEL_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.modelSigning.existingSecret | quote }}
      key: {{ .Values.modelSigning.key | quote }}
{{- end }}
- name: STREAM_VAE_WORKER__HTTP_PORT
  value: {{ .Values.http.port | int | quote }}
- name: STREAM_VAE_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
- name: STREAM_VAE_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: STREAM_VAE_TOPOLOGY_DIR
  value: {{ include "stream-vae.topologyDir" . | quote }}
{{- end -}}

{{/*
Volumes shared by workers and the trainer besides topologies and /tmp: the private CA bundles, then the
component's extraVolumes. Argument: (list $ componentValues).
*/}}
{{- define "stream-vae.extraVolumes" -}}
{{- $ := index . 0 -}}{{- $c := index . 1 -}}
{{- with (dig "tls" "caSecret" "" $.Values.kafka) }}
- name: kafka-ca
  secret:
    secretName: {{ . | quote }}
    items:
      - key: {{ $.Values.kafka.tls.caKey | quote }}
        path: ca.crt
{{- end }}
{{- with (dig "tls" "caSecret" "" $.Values.redis) }}
- name: redis-ca
  secret:
    secretName: {{ . | quote }}
    items:
      - key: {{ $.Values.redis.tls.caKey | quote }}
        path: ca.crt
{{- end }}
{{- with $c.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Mounts matching stream-vae.extraVolumes. Argument: (list $ componentValues). */}}
{{- define "stream-vae.extraVolumeMounts" -}}
{{- $ := index . 0 -}}{{- $c := index . 1 -}}
{{- if dig "tls" "caSecret" "" $.Values.kafka }}
- name: kafka-ca
  mountPath: {{ include "stream-vae.kafkaCaDir" $ }}
  readOnly: true
{{- end }}
{{- if dig "tls" "caSecret" "" $.Values.redis }}
- name: redis-ca
  mountPath: {{ include "stream-vae.redisCaDir" $ }}
  readOnly: true
{{- end }}
{{- with $c.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod-level security context: fixed hardening plus the ids from values. */}}
{{- define "stream-vae.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.podSecurityContext }}
{{- if not (kindIs "invalid" .runAsUser) }}
runAsUser: {{ .runAsUser | int }}
{{- end }}
{{- if not (kindIs "invalid" .runAsGroup) }}
runAsGroup: {{ .runAsGroup | int }}
{{- end }}
{{- if not (kindIs "invalid" .fsGroup) }}
fsGroup: {{ .fsGroup | int }}
{{- end }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "stream-vae.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* HTTP probes on the named port. Argument: the component's values (startupProbe, livenessProbe, readinessProbe). */}}
{{- define "stream-vae.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .startupProbe | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml .livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  {{- toYaml .readinessProbe | nindent 2 }}
{{- end -}}

{{/* Checks across values that the JSON schema cannot state clearly. Renders nothing. */}}
{{- define "stream-vae.validate" -}}
{{- $topologies := (include "stream-vae.topologies" . | fromJson).items -}}
{{- if not $topologies -}}
{{- fail "topologies: no topology is enabled; list at least one stream (see values.yaml `topologies.demo`)" -}}
{{- end -}}
{{- if and .Values.worker.autoscaling.enabled .Values.worker.keda.enabled -}}
{{- fail "worker.autoscaling.enabled and worker.keda.enabled are both true: KEDA manages its own HorizontalPodAutoscaler, pick one" -}}
{{- end -}}
{{- if and (dig "tls" "caSecret" "" .Values.kafka) (not (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL"))) -}}
{{- fail (printf "kafka.tls.caSecret is set but kafka.securityProtocol is %s: a CA bundle is only used with SSL or SASL_SSL" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if dig "tls" "caSecret" "" .Values.redis -}}
{{- if not (hasPrefix "rediss://" .Values.redis.url) -}}
{{- fail "redis.tls.caSecret is set but redis.url is not a rediss:// (TLS) URL" -}}
{{- end -}}
{{- $ca := regexFind "[?&]ssl_ca_certs=[^&#]*" .Values.redis.url -}}
{{- if and $ca (ne (regexReplaceAll "^[?&]ssl_ca_certs=" $ca "") (include "stream-vae.redisCaFile" .)) -}}
{{- fail (printf "redis.url sets %s but redis.tls.caSecret mounts the CA at %s: use ssl_ca_certs=%s (or leave it out; the chart adds it)" (trimPrefix "&" (trimPrefix "?" $ca)) (include "stream-vae.redisCaFile" .) (include "stream-vae.redisCaFile" .)) -}}
{{- end -}}
{{- end -}}
{{- range $c := list "worker" "trainer" -}}
{{- $names := list "topologies" "tmp" "kafka-ca" "redis-ca" -}}
{{- range $v := (default list (get (get $.Values $c) "extraVolumes")) -}}
{{- if has $v.name $names -}}
{{- fail (printf "%s.extraVolumes: the volume name %q is taken (the chart uses topologies, tmp, kafka-ca, redis-ca)" $c $v.name) -}}
{{- end -}}
{{- $names = append $names $v.name -}}
{{- end -}}
{{- end -}}
{{- if or (regexMatch "^[a-z]+://[^?@]*:[^?]*@" .Values.redis.url) (regexMatch "(?i)[?&](password|pass|pwd)=" .Values.redis.url) -}}
{{- fail "redis.url carries a password: put it in a Secret and name it in redis.existingSecret (key redis.passwordKey); passwords never go into values or ConfigMaps" -}}
{{- end -}}
{{- end -}}
