{{/*
Template names are prefixed with the chart name so they never collide with a parent chart's.
*/}}

{{/* The chart name: the app.kubernetes.io/name label. */}}
{{- define "seldon-model.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prefix of every object name. It is deployment.name, not the release name: the SeldonDeployment name
is the <deployment> in /seldon/<namespace>/<deployment>/, which clients, load tests and the local
stack share through the values file.
*/}}
{{- define "seldon-model.fullname" -}}
{{- .Values.deployment.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "seldon-model.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: name + instance only, so they never change across upgrades. */}}
{{- define "seldon-model.selectorLabels" -}}
app.kubernetes.io/name: {{ include "seldon-model.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "seldon-model.labels" -}}
helm.sh/chart: {{ include "seldon-model.chart" . }}
{{ include "seldon-model.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ .Values.model.name }}
{{- end -}}

{{/*
The label the Seldon operator puts on every pod and Service of a SeldonDeployment
(seldon-deployment-id = metadata.name = spec.name); NetworkPolicy and monitors select with it
because the operator, not this chart, creates the pods.
*/}}
{{- define "seldon-model.seldonPodLabels" -}}
seldon-deployment-id: {{ include "seldon-model.fullname" . }}
{{- end -}}

{{/*
The predictor Service, named explicitly with the seldon.io/svc-name annotation so the helm test and
NOTES do not depend on the operator's naming scheme. Call with (dict "root" $ "predictor" $p).
*/}}
{{- define "seldon-model.predictorService" -}}
{{- printf "%s-%s" (include "seldon-model.fullname" .root) .predictor.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A predictor's modelUri: its own, else <model.storageUri>/<version>. Call with (dict "root" $ "predictor" $p). */}}
{{- define "seldon-model.modelUri" -}}
{{- if .predictor.modelUri -}}
{{- .predictor.modelUri -}}
{{- else -}}
{{- printf "%s/%s" (trimSuffix "/" .root.Values.model.storageUri) .predictor.version -}}
{{- end -}}
{{- end -}}

{{/* SERVING_ARTIFACT_DIGESTS of a predictor's container: <version>=<model.artifacts[version]>, the
digest serving.runtime accepts for the one version the container serves, and
<version>/model.onnx=<digest> when the version's compiled form has one. Call with (dict "root" $ "predictor" $p). */}}
{{- define "seldon-model.artifactDigests" -}}
{{- $artifacts := .root.Values.model.artifacts | default dict -}}
{{- $version := toString .predictor.version -}}
{{- $digest := index $artifacts $version | default "" -}}
{{- printf "%s=%s" $version $digest -}}
{{- $compiled := printf "%s/model.onnx" $version -}}
{{- if index $artifacts $compiled -}}
{{- printf ",%s=%s" $compiled (index $artifacts $compiled) -}}
{{- end -}}
{{- end -}}

{{/*
The predictors with the spec's per-predictor defaults filled in (files/predictor-defaults.json,
generated from serving/spec.py): Helm merges chart defaults into maps but not into list items.
A section given partly (e.g. hpa: {enabled: true}) gets its other keys from the defaults, as in
pydantic. Use as: include "seldon-model.predictors" . | fromJsonArray
*/}}
{{- define "seldon-model.predictors" -}}
{{- $defaults := .Files.Get "files/predictor-defaults.json" | fromJson -}}
{{- $out := list -}}
{{- range (.Values.predictors | default list) -}}
{{- $p := deepCopy (. | default dict) -}}
{{- range $k, $v := $defaults.fields -}}
{{- if not (hasKey $p $k) }}{{ $_ := set $p $k $v }}{{ end -}}
{{- end -}}
{{- range $section, $fields := $defaults.sections -}}
{{- $s := deepCopy ((get $p $section) | default dict) -}}
{{- range $k, $v := $fields -}}
{{- if not (hasKey $s $k) }}{{ $_ := set $s $k $v }}{{ end -}}
{{- end -}}
{{- $_ := set $p $section $s -}}
{{- end -}}
{{- $out = append $out $p -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The image of this project's runtime. */}}
{{- define "seldon-model.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/*
Pod Security Standards "restricted" for a container. Set on every container we define because the
Seldon operator replaces the pod-level securityContext with its own (empty unless the operator's
DEFAULT_USER_ID is set).
*/}}
{{- define "seldon-model.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "seldon-model.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
validateValues: the Seldon operator webhook's rules (seldondeployment_webhook.go), the same as
serving/spec.py's seldon_rule_violations and with the same messages, so `helm install` refuses what
the operator would. Plus what this chart needs: the release namespace is deployment.namespace, and a
custom predictor reads its model from a PVC (the operator downloads artifacts only for prepackaged
servers). Every message names the key and the fix; all problems are reported at once.
*/}}
{{- define "seldon-model.validateValues" -}}
{{- $errors := list -}}
{{- $predictors := include "seldon-model.predictors" . | fromJsonArray -}}
{{- if ne .Release.Namespace .Values.deployment.namespace -}}
{{- $errors = append $errors (printf "deployment.namespace: is %q but the release namespace is %q; install with --namespace %s (or change deployment.namespace)" .Values.deployment.namespace .Release.Namespace .Values.deployment.namespace) -}}
{{- end -}}
{{- if not $predictors -}}
{{- $errors = append $errors "predictors: at least one predictor is required; add a stable predictor" -}}
{{- end -}}
{{- $seen := dict -}}
{{- $primaries := list -}}
{{- $shadows := list -}}
{{- range $i, $p := $predictors -}}
{{- $name := toString $p.name -}}
{{- if hasKey $seen $name -}}
{{- $errors = append $errors (printf "predictors[%d].name: duplicate predictor name '%s'; names must be unique" $i $name) -}}
{{- end -}}
{{- $_ := set $seen $name true -}}
{{- $traffic := int $p.traffic -}}
{{- if or (lt $traffic 0) (gt $traffic 100) -}}
{{- $errors = append $errors (printf "predictors[%d].traffic: %d is outside 0..100; use a percentage" $i $traffic) -}}
{{- end -}}
{{- if $p.shadow -}}
{{- $shadows = append $shadows $name -}}
{{- else -}}
{{- $primaries = append $primaries (dict "name" $name "traffic" $traffic) -}}
{{- end -}}
{{- $server := $p.server -}}
{{- if and (eq $server "SKLEARN_SERVER") (not $p.modelUri) -}}
{{- $errors = append $errors (printf "predictors[%d].modelUri: required when server is SKLEARN_SERVER; set it to the artifact folder (e.g. gs://bucket/breast-cancer/v1)" $i) -}}
{{- end -}}
{{- if and (eq $server "SKLEARN_SERVER") $p.env -}}
{{- $errors = append $errors (printf "predictors[%d].env: not supported with SKLEARN_SERVER (the operator then skips its own MLSERVER_* settings); remove it or use server: custom" $i) -}}
{{- end -}}
{{- if eq $server "custom" -}}
{{- $uri := include "seldon-model.modelUri" (dict "root" $ "predictor" $p) -}}
{{- if not (hasPrefix "pvc://" $uri) -}}
{{- $errors = append $errors (printf "predictors[%d].modelUri: %q: a custom predictor reads its model from a PersistentVolumeClaim, pvc://<claim>/<path> (the operator downloads s3:// or gs:// only for prepackaged servers); use a PVC or server: SKLEARN_SERVER" $i $uri) -}}
{{- end -}}
{{- if hasKey ($p.env | default dict) "SERVING_ARTIFACT_DIGESTS" -}}
{{- $errors = append $errors (printf "predictors[%d].env.SERVING_ARTIFACT_DIGESTS: the chart sets it from model.artifacts (the digests the spec was reviewed with); remove it and record digests with 'serving train --record-digests charts/seldon-model/values.yaml'" $i) -}}
{{- end -}}
{{- if not (index ($.Values.model.artifacts | default dict) (toString $p.version)) -}}
{{- $errors = append $errors (printf "model.artifacts.%s: no sha256 recorded for version %s (predictors[%d] %s); the runtime refuses to unpickle an artifact the spec does not name. Record it with 'serving train --record-digests charts/seldon-model/values.yaml'" (toString $p.version) (toString $p.version) $i $name) -}}
{{- end -}}
{{- end -}}
{{- if and $p.hpa.enabled (lt (int $p.hpa.maxReplicas) (int $p.hpa.minReplicas)) -}}
{{- $errors = append $errors (printf "predictors[%d].hpa: maxReplicas (%d) is below minReplicas (%d); raise maxReplicas" $i (int $p.hpa.maxReplicas) (int $p.hpa.minReplicas)) -}}
{{- end -}}
{{- end -}}
{{- if gt (len $primaries) 1 -}}
{{- $total := 0 -}}
{{- $terms := list -}}
{{- range $primaries -}}
{{- $total = add $total .traffic -}}
{{- $terms = append $terms (printf "%s %d" .name .traffic) -}}
{{- end -}}
{{- if ne (int $total) 100 -}}
{{- $errors = append $errors (printf "predictors[].traffic: non-shadow traffic must sum to 100 when there are several predictors, got %s = %d; adjust the weights" (join " + " $terms) (int $total)) -}}
{{- end -}}
{{- end -}}
{{- if gt (len $shadows) 1 -}}
{{- $quoted := list -}}
{{- range $shadows -}}
{{- $quoted = append $quoted (printf "'%s'" .) -}}
{{- end -}}
{{- $errors = append $errors (printf "predictors[].shadow: at most one shadow predictor, got [%s]; set shadow: false on all but one" (join ", " $quoted)) -}}
{{- end -}}
{{- if and $shadows (not $primaries) -}}
{{- $errors = append $errors "predictors[].shadow: a shadow cannot be the only predictor; add a non-shadow predictor" -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\nvalues are invalid:\n  %s" (join "\n  " $errors)) -}}
{{- end -}}
{{- end -}}
