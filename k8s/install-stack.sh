#!/usr/bin/env bash
# make k8s-stack: install, into the current cluster, the monitoring stack the lab expects, at the
# versions pinned in k8s/stack.env: metrics-server (for the HorizontalPodAutoscaler) and
# kube-prometheus-stack (release "prometheus" in "monitoring", with k8s/helm-values.yaml).
# The README's "Promote to Kubernetes" shows the same commands. Safe to run again (upgrade).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=stack.env
source k8s/stack.env

helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
helm repo add metrics-server https://kubernetes-sigs.github.io/metrics-server/ --force-update
helm repo update prometheus-community metrics-server

helm upgrade --install metrics-server metrics-server/metrics-server \
  --version "$METRICS_SERVER_CHART_VERSION" --namespace kube-system \
  -f k8s/metrics-server-values.yaml

values=(-f k8s/helm-values.yaml)
if [ "$(kubectl config current-context)" = docker-desktop ]; then
  values+=(-f k8s/helm-values-docker-desktop.yaml)
fi
helm upgrade --install prometheus prometheus-community/kube-prometheus-stack \
  --version "$KUBE_PROMETHEUS_STACK_VERSION" --namespace monitoring --create-namespace \
  "${values[@]}" --wait --timeout 10m
