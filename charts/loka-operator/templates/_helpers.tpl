{{/* Names and labels, in one place. */}}
{{- define "loka-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loka-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "loka-operator.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "loka-operator.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "loka-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "loka-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "loka-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loka-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "loka-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "loka-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loka
{{- end }}

{{- define "loka-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespaces the operator watches, comma-separated; empty in the cluster scope (every namespace). */}}
{{- define "loka-operator.watchNamespaces" -}}
{{- if ne .Values.scope "cluster" }}
{{- join "," (default (list .Release.Namespace) .Values.watchNamespaces) }}
{{- end }}
{{- end }}

{{/*
What the operator does in watched namespaces, verb by verb, as read from its code
(tests/deploy/operator_api.py derives the same table from operator/loka_operator and a test
compares them). The same rules serve the ClusterRole and the per-namespace Roles.
*/}}
{{- define "loka-operator.namespacedRules" -}}
# kopf watches runs; the reconciler writes only the status subresource (get: the per-run Role grants it).
# create: a RewardCycle's stages.
- apiGroups: [loka.dev]
  resources: [trainingruns]
  verbs: [get, list, watch, create]
- apiGroups: [loka.dev]
  resources: [trainingruns/status]
  verbs: [patch]
# Children carry blockOwnerDeletion; OpenShift's OwnerReferencesPermissionEnforcement admission plugin
# then requires update on the owner's finalizers, or every create is refused.
- apiGroups: [loka.dev]
  resources: [trainingruns/finalizers]
  verbs: [update]
# Evaluations, the same way: watched, status written, children owned with blockOwnerDeletion (get: the
# evaluator's Role grants it; create: a RewardCycle's stages).
- apiGroups: [loka.dev]
  resources: [evaluations]
  verbs: [get, list, watch, create]
- apiGroups: [loka.dev]
  resources: [evaluations/status]
  verbs: [patch]
- apiGroups: [loka.dev]
  resources: [evaluations/finalizers]
  verbs: [update]
# RewardCycles: watched, status written, their stages (TrainingRuns, Evaluations) owned with blockOwnerDeletion.
- apiGroups: [loka.dev]
  resources: [rewardcycles]
  verbs: [list, watch]
- apiGroups: [loka.dev]
  resources: [rewardcycles/status]
  verbs: [patch]
- apiGroups: [loka.dev]
  resources: [rewardcycles/finalizers]
  verbs: [update]
# An Evaluation runs as a Job (watched, filtered by label on the server).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create]
# get by name: that each judge's rubric ConfigMap key exists before the evaluator's pod mounts it.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [get, list, watch, create, patch, delete]
# Suspending a queued run deactivates its Workload (spec.active).
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, watch, patch]
- apiGroups: [kueue.x-k8s.io]
  resources: [localqueues]
  verbs: [get, create]
# get by name: that a referenced Secret and key exist (its metadata: key names, no values), and only once
# KubeRay shows a message, the values' digests to redact it with; create: the run's Ray token, which the
# operator never reads back. Never list or watch.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# Each run's NetworkPolicy: its Ray pods admit only the run's own pods, and KubeRay on the dashboard port
# (watched, filtered by label on the server, so drift is seen without polling).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch]
# The per-run ServiceAccount, Role and RoleBinding the trainer uses to report status (watched, filtered
# by label on the server, so drift is seen without polling).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch]
# The MCP environment servers a run brings (spec.environment.servers[].run): a Deployment and a Service each,
# owned by the run (watched, filtered by label on the server; patch: replicas follow the run's admission).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* What the operator does in its own namespace: compete for its leader-election Lease. */}}
{{- define "loka-operator.leaderElectionRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
{{- end }}
