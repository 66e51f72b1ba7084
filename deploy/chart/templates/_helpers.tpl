{{/* Common labels of every object the chart makes. */}}
{{- define "aim.labels" -}}
app.kubernetes.io/part-of: aim
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{- define "aim.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "aim.scalerAddress" -}}
{{- if .Values.operator.scalerAddress -}}
{{ .Values.operator.scalerAddress }}
{{- else -}}
{{ .Values.scaler.serviceName }}.{{ .Values.scaler.namespace }}.svc:{{ .Values.scaler.scalerPort }}
{{- end -}}
{{- end -}}
