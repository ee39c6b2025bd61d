{{/* Names and labels. */}}
{{- define "simplivity-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "simplivity-exporter.fullname" -}}
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

{{- define "simplivity-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "simplivity-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "simplivity-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "simplivity-exporter.labels" -}}
helm.sh/chart: {{ include "simplivity-exporter.chart" . }}
{{ include "simplivity-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: simplivity-exporter
{{- end }}

{{- define "simplivity-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "simplivity-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "simplivity-exporter.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the exporter runs --demo: no controller, and demo: true. */}}
{{- define "simplivity-exporter.demo" -}}
{{- if and .Values.demo .Values.controllers }}
{{- fail "demo: true and controllers are both set: remove demo to poll the controllers" }}
{{- end }}
{{- if not .Values.controllers }}
{{- if not .Values.demo }}
{{- fail "no controller configured: list your controllers under `controllers` (see the chart's README), or set demo: true to run the built-in simulated controller (made-up data, for a first look only)" }}
{{- end }}
{{- true }}
{{- end }}
{{- end }}

{{- define "simplivity-exporter.caFile" -}}{{ include "simplivity-exporter.configDir" . }}/controllers-ca.pem{{- end }}

{{- define "simplivity-exporter.sharded" -}}
{{- if gt (int .Values.sharding.shards) 1 }}true{{ end }}
{{- end }}

{{- define "simplivity-exporter.secretName" -}}
{{- default (printf "%s-passwords" (include "simplivity-exporter.fullname" .)) .Values.existingSecret }}
{{- end }}

{{- define "simplivity-exporter.configDir" -}}/etc/simplivity-exporter/config{{- end }}
{{- define "simplivity-exporter.secretDir" -}}/etc/simplivity-exporter/passwords{{- end }}

{{/*
The Secret key holding a controller's password: passwordKey, else the name. Checks the
whole list at once: valid Secret keys, no key used twice, a password for each
controller unless existingSecret, no password alongside existingSecret.
*/}}
{{- define "simplivity-exporter.passwordKey" -}}
{{- default .name .passwordKey }}
{{- end }}

{{- define "simplivity-exporter.checkControllers" -}}
{{- $seen := dict }}
{{- range $i, $c := .Values.controllers }}
{{- $key := include "simplivity-exporter.passwordKey" $c }}
{{- if not (regexMatch "^[-._a-zA-Z0-9]+$" $key) }}
{{- fail (printf "controllers[%d] (%s): %q is not a valid Secret key (letters, digits, - _ .): set passwordKey" $i $c.name $key) }}
{{- end }}
{{- if hasKey $seen $key }}
{{- fail (printf "controllers[%d] (%s): Secret key %q is already used by controllers[%v]: set a distinct passwordKey" $i $c.name $key (get $seen $key)) }}
{{- end }}
{{- $_ := set $seen $key $i }}
{{- if and $.Values.existingSecret $c.password }}
{{- fail (printf "controllers[%d] (%s): remove password, existingSecret %q provides it (key %q)" $i $c.name $.Values.existingSecret $key) }}
{{- end }}
{{- if and (not $.Values.existingSecret) (not $c.password) }}
{{- fail (printf "controllers[%d] (%s): set password, or existingSecret with a key %q" $i $c.name $key) }}
{{- end }}
{{- end }}
{{- if and .Values.existingSecret (not .Values.controllers) }}
{{- fail "existingSecret is set but controllers is empty: list the controllers whose passwords it holds" }}
{{- end }}
{{- end }}

{{/* The exporter's config file: .Values.config plus the controllers, passwords by file. */}}
{{- define "simplivity-exporter.configFile" -}}
{{- $controllers := list }}
{{- range .Values.controllers }}
{{- $entry := dict "name" .name "url" .url "username" .username "password_file" (printf "%s/%s" (include "simplivity-exporter.secretDir" $) (include "simplivity-exporter.passwordKey" .)) }}
{{- $tls := deepCopy (.tls | default dict) }}
{{- if and $.Values.caBundle (not (hasKey $tls "ca_file")) }}
{{- $_ := set $tls "ca_file" (include "simplivity-exporter.caFile" $) }}
{{- end }}
{{- with $tls }}
{{- $_ := set $entry "tls" . }}
{{- end }}
{{- $controllers = append $controllers $entry }}
{{- end }}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "controllers" $controllers }}
{{- toYaml $config }}
{{- end }}

{{/* The pod template, shared by the Deployment and the StatefulSet. */}}
{{- define "simplivity-exporter.podTemplate" -}}
metadata:
  labels:
    {{- include "simplivity-exporter.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $annotations := deepCopy .Values.podAnnotations }}
  {{- if not (include "simplivity-exporter.demo" .) }}
  {{- /* A new config rolls the pods; no checksum of the Secret, which would leak a hash of the passwords. */}}
  {{- $_ := set $annotations "checksum/config" (include "simplivity-exporter.configFile" . | sha256sum) }}
  {{- with .Values.caBundle }}
  {{- $_ := set $annotations "checksum/ca-bundle" (. | sha256sum) }}
  {{- end }}
  {{- end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "simplivity-exporter.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: exporter
      image: {{ include "simplivity-exporter.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - --web.listen-address=:{{ .Values.containerPort }}
        - --log.level={{ .Values.log.level }}
        - --log.format={{ .Values.log.format }}
        {{- if include "simplivity-exporter.demo" . }}
        - --demo
        {{- else }}
        - --config.file={{ include "simplivity-exporter.configDir" . }}/config.yaml
        {{- end }}
        {{- if include "simplivity-exporter.sharded" . }}
        # The shard index comes from the pod name's ordinal (<name>-0, <name>-1, ...).
        - --shard.count={{ .Values.sharding.shards }}
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- with .Values.extraEnv }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.containerPort }}
          protocol: TCP
      {{- with .Values.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if not (include "simplivity-exporter.demo" .) }}
        - name: config
          mountPath: {{ include "simplivity-exporter.configDir" . }}
          readOnly: true
        - name: passwords
          mountPath: {{ include "simplivity-exporter.secretDir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 16Mi
    {{- if not (include "simplivity-exporter.demo" .) }}
    - name: config
      configMap:
        name: {{ include "simplivity-exporter.fullname" . }}
    - name: passwords
      secret:
        secretName: {{ include "simplivity-exporter.secretName" . }}
        # Readable by the exporter's group (fsGroup), by no one else.
        defaultMode: 0440
        items:
          {{- range .Values.controllers }}
          - key: {{ include "simplivity-exporter.passwordKey" . }}
            path: {{ include "simplivity-exporter.passwordKey" . }}
          {{- end }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
One dashboard panel, changed in place (see grafana-dashboard.yaml): runbook links for the
alerts its description names, and its threshold steps moved with theirs. Outputs nothing.
*/}}
{{- define "simplivity-exporter.dashboardPanel" }}
{{- $panel := .panel }}
{{- $alerts := list }}
{{- $sentence := regexFind `Alerts?: Simplivity\w+(, Simplivity\w+)*\.$` (trim ($panel.description | default "")) }}
{{- if $sentence }}
{{- $alerts = regexFindAll `Simplivity\w+` $sentence -1 }}
{{- end }}
{{- if and $alerts .context.base }}
{{- $links := list }}
{{- range $alert := $alerts }}
{{- $links = append $links (dict "title" (printf "Runbook: %s" $alert) "url" (printf "%s#%s" $.context.base (lower $alert)) "targetBlank" true) }}
{{- end }}
{{- $_ := set $panel "links" $links }}
{{- end }}
{{- $stepLists := list }}
{{- with $panel.fieldConfig }}
{{- with .defaults }}{{ with .thresholds }}{{ $stepLists = append $stepLists .steps }}{{ end }}{{ end }}
{{- range $override := .overrides | default list }}
{{- range $property := $override.properties }}
{{- if eq $property.id "thresholds" }}{{ $stepLists = append $stepLists $property.value.steps }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $alert := $alerts }}
{{- with get $.context.thresholds $alert }}
{{- $shipped := index . 0 }}
{{- $wanted := index . 1 }}
{{- range $steps := $stepLists }}
{{- range $step := $steps }}
{{- if and (kindIs "float64" $step.value) (eq $step.value $shipped) }}
{{- $_ := set $step "value" $wanted }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A number as PromQL and Grafana read it: 93600, not 9.36e+04 (Helm's values are float64).
*/}}
{{- define "simplivity-exporter.number" -}}
{{- if eq (float64 (int64 .)) (float64 .) }}{{ printf "%d" (int64 .) }}{{ else }}{{ printf "%v" (float64 .) }}{{ end }}
{{- end }}
