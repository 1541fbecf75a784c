{{/* Names and labels. */}}
{{- define "shop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shop.fullname" -}}
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

{{- define "shop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "shop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The pods of one component (products, orders, consumers, migrate): call with (list $ "orders"). */}}
{{- define "shop.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "shop.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "shop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shop.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* A process kind's Secret (its passwords only): call with (list $ "orders"). */}}
{{- define "shop.secretName" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- (index $root.Values.identities $kind).existingSecret | default (printf "%s-%s-credentials" (include "shop.fullname" $root) $kind) }}
{{- end }}

{{/* KAFKA_SECURITY_PROTOCOL, and whether it logs in (SASL_PLAINTEXT, SASL_SSL) or uses TLS. */}}
{{- define "shop.kafkaProtocol" -}}
{{- .Values.config.KAFKA_SECURITY_PROTOCOL | default "PLAINTEXT" | toString }}
{{- end }}

{{- define "shop.kafkaSasl" -}}
{{- if hasPrefix "SASL_" (include "shop.kafkaProtocol" .) }}true{{ end }}
{{- end }}

{{- define "shop.kafkaTls" -}}
{{- if has (include "shop.kafkaProtocol" .) (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/* The CA bundle for the database and the brokers: "configMap", "secret" or "" (none). */}}
{{- define "shop.caSource" -}}
{{- $tls := .Values.tls -}}
{{- $given := compact (list $tls.caBundle $tls.existingConfigMap $tls.existingSecret) -}}
{{- if gt (len $given) 1 }}
{{- fail "tls: give one of caBundle, existingConfigMap and existingSecret" }}
{{- end }}
{{- if or $tls.caBundle $tls.existingConfigMap }}configMap{{ else if $tls.existingSecret }}secret{{ end }}
{{- end }}

{{- define "shop.caName" -}}
{{- .Values.tls.existingConfigMap | default .Values.tls.existingSecret | default (printf "%s-ca" (include "shop.fullname" .)) }}
{{- end }}

{{- define "shop.caDir" -}}/etc/shop/ca{{- end }}
{{- define "shop.caFile" -}}{{ include "shop.caDir" . }}/ca.pem{{- end }}

{{/* Which servers get the CA file: DB_CA_FILE, KAFKA_CA_FILE, RABBITMQ_CA_FILE (a dict). */}}
{{- define "shop.caSettings" -}}
{{- if include "shop.caSource" . }}
{{- if .Values.tls.database }}
DB_CA_FILE: {{ include "shop.caFile" . }}
{{- end }}
{{- if and .Values.tls.kafka (include "shop.kafkaTls" .) }}
KAFKA_CA_FILE: {{ include "shop.caFile" . }}
{{- end }}
{{- if .Values.tls.rabbitmq }}
RABBITMQ_CA_FILE: {{ include "shop.caFile" . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The CA volume: call with (list $ "name of a ConfigMap made by the chart"). Only the CA's
key is projected, so a Secret that also holds a key pair gives the pod the certificate alone. */}}
{{- define "shop.caVolume" -}}
{{- $root := index . 0 -}}
- name: ca
  {{- if eq (include "shop.caSource" $root) "secret" }}
  secret:
    secretName: {{ $root.Values.tls.existingSecret }}
  {{- else }}
  configMap:
    name: {{ $root.Values.tls.existingConfigMap | default (index . 1) }}
  {{- end }}
    items:
      - key: {{ $root.Values.tls.key }}
        path: ca.pem
{{- end }}

{{/* A process kind's accounts, as environment variables: its own users and, from its own
Secret, its own passwords. A kind without a role on RabbitMQ gets an empty user and password:
no account, and not the development guest/guest, which a process listening beyond loopback
refuses. Call with (list $ "orders"). */}}
{{- define "shop.identityEnv" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $identity := index $root.Values.identities $kind -}}
{{- $secret := include "shop.secretName" . -}}
- name: DB_USER
  value: {{ required (printf "identities.%s.dbUser is required" $kind) $identity.dbUser | quote }}
- name: DB_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: DB_PASSWORD}
{{- if include "shop.kafkaSasl" $root }}
- name: KAFKA_USER
  value: {{ required (printf "identities.%s.kafkaUser is required with SASL" $kind) $identity.kafkaUser | quote }}
- name: KAFKA_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: KAFKA_PASSWORD}
{{- end }}
{{- if eq $kind "orders" }}
- name: RABBITMQ_USER
  value: {{ required "identities.orders.rabbitmqUser is required" $identity.rabbitmqUser | quote }}
- name: RABBITMQ_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: RABBITMQ_PASSWORD}
{{- else }}
- name: RABBITMQ_USER
  value: ""
- name: RABBITMQ_PASSWORD
  value: ""
{{- end }}
{{- if eq $kind "consumers" }}
- name: RABBITMQ_CONSUMER_USER
  value: {{ required "identities.consumers.rabbitmqUser is required" $identity.rabbitmqUser | quote }}
- name: RABBITMQ_CONSUMER_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: RABBITMQ_CONSUMER_PASSWORD}
{{- end }}
{{- end }}

{{/* The names the chart sets per process: neither `config` nor a process's `env` may. */}}
{{- define "shop.accountNames" -}}
{{- list "DB_USER" "DB_PASSWORD" "DB_MIGRATE_USER" "DB_MIGRATE_PASSWORD" "KAFKA_USER" "KAFKA_PASSWORD" "RABBITMQ_USER" "RABBITMQ_PASSWORD" "RABBITMQ_CONSUMER_USER" "RABBITMQ_CONSUMER_PASSWORD" "DB_CA_FILE" "KAFKA_CA_FILE" "RABBITMQ_CA_FILE" | toJson }}
{{- end }}

{{/* Values of the one-Secret chart (0.1.0) are refused, not silently ignored. */}}
{{- define "shop.valuesCheck" -}}
{{- if .Values.secrets }}
{{- fail "secrets.* is gone: each process kind has its own accounts and Secret under identities.products, identities.orders and identities.consumers (README.md)" }}
{{- end }}
{{- $names := include "shop.accountNames" . | fromJsonArray }}
{{- range $name, $_ := .Values.config }}
{{- if has $name $names }}
{{- fail (printf "config.%s: accounts are per process (identities.*) and CA files come from tls.*; the chart sets %s" $name $name) }}
{{- end }}
{{- end }}
{{- range $kind := list "products" "orders" "consumers" }}
{{- range $name, $_ := (index $.Values $kind).env }}
{{- if has $name $names }}
{{- fail (printf "%s.env.%s: accounts are per process (identities.%s) and CA files come from tls.*" $kind $name $kind) }}
{{- end }}
{{- end }}
{{- end }}
{{- $protocol := include "shop.kafkaProtocol" . }}
{{- if not (has $protocol (list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL")) }}
{{- fail (printf "config.KAFKA_SECURITY_PROTOCOL=%s: one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL" $protocol) }}
{{- end }}
{{- $_ := include "shop.caSource" . }}
{{- $ratio := .Values.tracing.samplingRatio }}
{{- if or (lt (float64 $ratio) 0.0) (gt (float64 $ratio) 1.0) }}
{{- fail (printf "tracing.samplingRatio=%v: the share of traces kept, from 0 to 1" $ratio) }}
{{- end }}
{{- end }}

{{/* The Secret holding DB_MIGRATE_PASSWORD (the migration Job's only). */}}
{{- define "shop.migrationSecretName" -}}
{{- .Values.migration.existingSecret | default (printf "%s-migration-credentials" (include "shop.fullname" .)) }}
{{- end }}

{{- define "shop.authCheck" -}}
{{- if not (or .Values.auth.jwksUrl .Values.auth.publicKey) }}
{{- fail "auth.jwksUrl (an OIDC provider's JWKS) or auth.publicKey (a PEM public key) is required" }}
{{- end }}
{{- end }}

{{/* Pod and container security: not root, read-only root file system, no capabilities. */}}
{{- define "shop.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "shop.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* A long-running component's Deployment: call with (dict "root" $ "component" "orders"
"command" (list ...) "port" 8081 "portName" "http" "env" (dict ...)). */}}
{{- define "shop.deployment" -}}
{{- $root := .root -}}
{{- $values := index $root.Values .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "shop.fullname" $root }}-{{ .component }}
  labels:
    {{- include "shop.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if not $values.autoscaling.enabled }}
  replicas: {{ $values.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "shop.selectorLabels" (list $root .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "shop.selectorLabels" (list $root .component) | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- with $root.Values.tls.caBundle }}
        checksum/ca: {{ . | sha256sum }}
        {{- end }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "shop.serviceAccountName" $root }}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      securityContext:
        {{- include "shop.podSecurityContext" $root | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "shop.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          ports:
            - name: {{ .portName }}
              containerPort: {{ .port }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "shop.fullname" $root }}-config
          env:
            # This process kind's accounts, its passwords from its own Secret.
            {{- include "shop.identityEnv" (list $root .component) | nindent 12 }}
            {{- with $root.Values.tracing.otlpEndpoint }}
            # Traces over OTLP/HTTP, tracing.samplingRatio of them (the consumers' too).
            - name: OTEL_EXPORTER_OTLP_ENDPOINT
              value: {{ . | quote }}
            - name: OTEL_TRACES_SAMPLER_ARG
              value: {{ $root.Values.tracing.samplingRatio | quote }}
            {{- end }}
            {{- range $name, $value := .env }}
            - name: {{ $name }}
              value: {{ $value | quote }}
            {{- end }}
            {{- range $name, $value := $values.env }}
            - name: {{ $name }}
              value: {{ $value | quote }}
            {{- end }}
          # Alive: the process answers. Ready: its database and brokers answer too. A broker
          # outage makes pods unready, never restarts them.
          startupProbe:
            httpGet: {path: /healthz, port: {{ .portName }}}
            periodSeconds: 2
            timeoutSeconds: 3
            failureThreshold: 30
          livenessProbe:
            httpGet: {path: /healthz, port: {{ .portName }}}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            httpGet: {path: /readyz, port: {{ .portName }}}
            periodSeconds: 5
            timeoutSeconds: 6
            failureThreshold: 2
          {{- if and $root.Values.preStopSleepSeconds (eq .portName "http") }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", "{{ $root.Values.preStopSleepSeconds }}"]
          {{- end }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- include "shop.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if include "shop.caSource" $root }}
            - name: ca
              mountPath: {{ include "shop.caDir" $root }}
              readOnly: true
            {{- end }}
            {{- if and $root.Values.auth.publicKey (not $root.Values.auth.jwksUrl) }}
            - name: auth
              mountPath: /auth
              readOnly: true
            {{- end }}
            {{- if and $root.Values.auth.jwksCaBundle $root.Values.auth.jwksUrl }}
            - name: auth-ca
              mountPath: /auth-ca
              readOnly: true
            {{- end }}
      volumes:
        # Worker processes share their metrics and cache counters through files here.
        - name: tmp
          emptyDir:
            sizeLimit: 256Mi
        {{- if include "shop.caSource" $root }}
        # The CA certificates of the database's and the brokers' server certificates.
        {{- include "shop.caVolume" (list $root (printf "%s-ca" (include "shop.fullname" $root))) | nindent 8 }}
        {{- end }}
        {{- if and $root.Values.auth.publicKey (not $root.Values.auth.jwksUrl) }}
        - name: auth
          configMap:
            name: {{ include "shop.fullname" $root }}-auth
        {{- end }}
        {{- if and $root.Values.auth.jwksCaBundle $root.Values.auth.jwksUrl }}
        - name: auth-ca
          configMap:
            name: {{ include "shop.fullname" $root }}-auth-ca
        {{- end }}
      {{- if $root.Values.spreadAcrossNodes }}
      topologySpreadConstraints:
        {{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
        - maxSkew: 1
          topologyKey: {{ $key }}
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "shop.selectorLabels" (list $root $.component) | nindent 14 }}
        {{- end }}
      {{- end }}
      {{- with $root.Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
