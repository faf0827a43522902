{{/* The comparator (serving comparator): shadow agreement from the executors' payload logs. */}}
{{- define "seldon-model.comparatorName" -}}
{{- printf "%s-comparator" (include "seldon-model.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "seldon-model.comparatorLabels" -}}
{{ include "seldon-model.selectorLabels" . }}
app.kubernetes.io/component: comparator
{{- end -}}

{{/* Whether the predictors' graphs log to the comparator: only with a shadow to compare. */}}
{{- define "seldon-model.logsToComparator" -}}
{{- $shadow := false -}}
{{- range (include "seldon-model.predictors" . | fromJsonArray) -}}
{{- if .shadow }}{{ $shadow = true }}{{ end -}}
{{- end -}}
{{- if and .Values.comparator.enabled $shadow }}true{{ end -}}
{{- end -}}

{{/* The URL a predictor's executor logs to: the role is in the path (the executor does not know
whether its predictor is the shadow). Call with (dict "root" $ "predictor" $p). */}}
{{- define "seldon-model.comparatorUrl" -}}
{{- printf "http://%s.%s.svc.cluster.local:%d/events/%s" (include "seldon-model.comparatorName" .root) .root.Values.deployment.namespace (int .root.Values.comparator.port) (ternary "shadow" "primary" (eq (toString .predictor.shadow) "true")) -}}
{{- end -}}
