#!/usr/bin/env bash
# make kind-smoke: docs/kubernetes.md's claims, checked end to end on a throwaway kind cluster.
# It creates the cluster, installs metrics-server and kube-prometheus-stack at the versions in
# k8s/stack.env, deploys the lab with k8s/deploy.sh, then checks that Prometheus scrapes every
# API pod and loads the lab's rules, that Grafana lists the lab's dashboards, that the HPA sees
# CPU, that the NetworkPolicy lets in labelled clients only, and that scaling the API to zero
# pages the alert receiver with HvsApiDown, which resolves once the API is back.
#
# Usage, from anywhere in the repository (about 25 minutes, most of it waiting for the alert):
#   k8s/kind-smoke.sh                   # deletes the cluster at the end, pass or fail
#   KEEP_CLUSTER=1 k8s/kind-smoke.sh    # keeps it (kubectl context kind-hvs-lab-smoke)
#   KIND_CLUSTER=other k8s/kind-smoke.sh
# Needs kind >= 0.32 (for the node image in k8s/stack.env), kubectl, helm, docker, python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source-path=SCRIPTDIR source=stack.env
source k8s/stack.env

CLUSTER=${KIND_CLUSTER:-hvs-lab-smoke}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
# The checks reach Prometheus through the API server's service proxy (no port-forward to keep
# alive). Grafana and the alert receiver are reached through port-forwards, as docs/kubernetes.md does:
# the receiver's NetworkPolicy admits only Alertmanager, and a port-forward is not subject to it.
PROMETHEUS=/api/v1/namespaces/monitoring/services/prometheus-kube-prometheus-prometheus:9090/proxy
API_HEALTH_URL=http://hvs-api-service.default.svc:5001/health
CLIENT_IMAGE=busybox:1.36

passed=""
forwards=""

step() { printf '\n== %s\n' "$*"; }

fail() {
  echo "FAILED: $*" >&2
  exit 1
}

# until_true <seconds> <description> <command...>: run the command every 5 s until it succeeds;
# fail the smoke test if it has not within the deadline. set -e is off inside an `until`
# condition, so each check function returns its own status (`|| return 1`).
until_true() {
  local seconds=$1 description=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  echo "-- $description (within ${seconds}s)"
  until "$@"; do
    if ((SECONDS >= deadline)); then
      fail "$description: still not true after ${seconds}s"
    fi
    sleep 5
  done
  pass "$description"
}

pass() { passed="$passed  ok  $1"$'\n'; }

cleanup() {
  local rc=$?
  for pid in $forwards; do
    kill "$pid" 2>/dev/null || true
  done
  printf '\nChecks passed:\n%s' "$passed"
  [ -n "$passed" ] || echo "  (none)"
  if [ "$KEEP_CLUSTER" = 1 ]; then
    echo "Kept the cluster: kubectl context kind-$CLUSTER; kind delete cluster --name $CLUSTER removes it."
  else
    [ "$rc" -eq 0 ] || echo "Run again with KEEP_CLUSTER=1 to look into the failure in the cluster."
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$rc"
}

# forward <namespace> <service> <service port>: a port-forward in the background to a free
# local port, which it prints; cleanup stops it.
forward() {
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  kubectl port-forward -n "$1" "svc/$2" "$port:$3" >/dev/null &
  forwards="$forwards $!"
  echo "$port"
}

utc_now() {
  # The format the alert receiver stamps on each alert (received_at), so strings compare.
  python3 -c 'from datetime import datetime, timezone; print(datetime.now(timezone.utc).isoformat(timespec="seconds"))'
}

for tool in kind kubectl helm docker python3 curl; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "1. A kind cluster named $CLUSTER ($KIND_NODE_IMAGE)"
if kind get kubeconfig --name "$CLUSTER" >/dev/null 2>&1; then
  echo "It exists already: using it."
else
  kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" \
    --config k8s/kind-cluster.yaml --wait 120s
fi
# deploy.sh finds the cluster to load the image into from this context's name.
kubectl config use-context "kind-$CLUSTER"

step "2. metrics-server $METRICS_SERVER_CHART_VERSION and kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION"
# docs/kubernetes.md's step 1, as make k8s-stack runs it. Its --wait covers the chart's Deployments,
# not the Prometheus and Alertmanager pods the operator starts afterwards: the checks below
# wait for those.
k8s/install-stack.sh

step "3. The lab (k8s/deploy.sh: build, load into kind, apply k8s/overlays/local, roll out)"
k8s/deploy.sh

step "4. Checks"

ready_api_pods() {
  kubectl get pods -n default -l app=hvs-api -o json | python3 -c '
import json, sys
pods = json.load(sys.stdin)["items"]
print(sum(1 for p in pods if "deletionTimestamp" not in p["metadata"] and any(
    c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))))'
}

up_api_targets() {
  kubectl get --raw "$PROMETHEUS/api/v1/targets" | python3 -c '
import json, sys
targets = json.load(sys.stdin)["data"]["activeTargets"]
print(sum(1 for t in targets if t["labels"].get("job") == "hvs-api" and t["health"] == "up"))'
}

api_pods_are_up_targets() {
  local ready up
  ready=$(ready_api_pods) && up=$(up_api_targets) || return 1
  echo "   $up target(s) up with job=hvs-api, $ready ready pod(s)"
  [ "$ready" -ge 2 ] && [ "$up" -eq "$ready" ]
}
until_true 300 "Prometheus scrapes every ready hvs-api pod (at least 2) as job=hvs-api, health up" \
  api_pods_are_up_targets

rule_groups_loaded() {
  kubectl get --raw "$PROMETHEUS/api/v1/rules" | python3 -c '
import json, re, sys
source = open("k8s/base/generated/hvs-api-prometheusrule.yaml").read()
expected = set(re.findall(r"^\s*- name: (hvs-api-[\w-]+)\s*$", source, re.M))
loaded = {g["name"] for g in json.load(sys.stdin)["data"]["groups"]}
missing = sorted(expected - loaded)
print(f"   {len(expected) - len(missing)} of {len(expected)} rule groups loaded"
      + ("; missing: " + ", ".join(missing) if missing else ""))
sys.exit(1 if missing or not expected else 0)'
}
until_true 180 "Prometheus has loaded every hvs-api-* rule group of the PrometheusRule" \
  rule_groups_loaded

# The stack runs the versions the lab was tested on (k8s/helm-values.yaml pins them), not the
# chart's newest.
prometheus_runs_the_pinned_version() {
  kubectl get --raw "$PROMETHEUS/api/v1/status/buildinfo" | WANTED=${PROMETHEUS_VERSION#v} python3 -c '
import json, os, sys
found = json.load(sys.stdin)["data"]["version"]
print(f"   Prometheus {found}")
sys.exit(0 if found.split("+")[0] == os.environ["WANTED"] else 1)'
}
until_true 60 "Prometheus runs $PROMETHEUS_VERSION" prometheus_runs_the_pinned_version

# The titles of the lab's dashboards as applied, one per line (the chart's own dashboards carry
# the same grafana_dashboard label, hence part-of). As many as the generated file holds, so
# that a changed label cannot leave the check with nothing to look for.
expected_titles=$(kubectl get configmap -n monitoring \
  -l grafana_dashboard=1,app.kubernetes.io/part-of=hvs-lab -o json | python3 -c '
import json, re, sys
titles = [json.loads(text)["title"]
          for cm in json.load(sys.stdin)["items"] for text in cm["data"].values()]
generated = len(re.findall(r"^  \S+\.json: ", open(sys.argv[1]).read(), re.M))
if not titles or len(titles) != generated:
    sys.exit(f"{len(titles)} lab dashboard(s) in the cluster, {generated} in {sys.argv[1]}")
print(*titles, sep="\n")' k8s/base/generated/grafana-dashboards-configmap.yaml) \
  || fail "the lab's dashboard ConfigMaps in the cluster do not match the generated ones"

grafana_user=$(kubectl get secret -n monitoring prometheus-grafana -o go-template='{{index .data "admin-user" | base64decode}}')
grafana_password=$(kubectl get secret -n monitoring prometheus-grafana -o go-template='{{index .data "admin-password" | base64decode}}')
# Not in a $(...): the port-forward must be a child of this shell, for cleanup to stop it.
forward monitoring prometheus-grafana 80 >"${TMPDIR:-/tmp}/hvs-smoke-port"
grafana_port=$(cat "${TMPDIR:-/tmp}/hvs-smoke-port")

grafana_lists_dashboards() {
  # The credentials go to curl on stdin, not on its command line, where ps would show them.
  printf 'user = "%s:%s"\n' "$grafana_user" "$grafana_password" \
    | curl -fsS -K - "http://127.0.0.1:$grafana_port/api/search?type=dash-db" \
    | EXPECTED="$expected_titles" python3 -c '
import json, os, sys
found = {d["title"] for d in json.load(sys.stdin)}
missing = [t for t in os.environ["EXPECTED"].splitlines() if t not in found]
if missing:
    sys.exit("   not yet in Grafana: " + ", ".join(missing))'
}
until_true 300 "Grafana lists every lab dashboard" grafana_lists_dashboards

hpa_reports_cpu() {
  local cpu
  cpu=$(kubectl get hpa hvs-api -n default \
    -o jsonpath='{.status.currentMetrics[*].resource.current.averageUtilization}') || return 1
  [ -n "$cpu" ] && echo "   CPU utilisation: $cpu%"
}
until_true 300 "the HPA reports the API's CPU (metrics-server works)" hpa_reports_cpu

# A throwaway pod in "default" GETs the API's /health; extra arguments go to kubectl run (the
# client label). kubectl returns the pod's exit code: 0 when it got an answer, 42 when wget
# failed, anything else when the pod itself did not run.
get_health_from_pod() {
  kubectl run "hvs-np-check-$RANDOM$RANDOM" -n default --image="$CLIENT_IMAGE" \
    --restart=Never --rm -i --pod-running-timeout=2m "$@" \
    --command -- sh -c "wget -q -T 3 -O /dev/null $API_HEALTH_URL || exit 42" </dev/null
}
labelled_client_gets_health() { get_health_from_pod --labels=hvs-api-client=true; }
until_true 180 "a pod labelled hvs-api-client=true reaches the API" labelled_client_gets_health

# The labelled pod above proved the image, DNS and the Service work, so a failed wget here
# is the NetworkPolicy's doing.
echo "-- a pod without the label does not reach the API"
rc=0
get_health_from_pod || rc=$?
[ "$rc" -eq 42 ] || fail "a pod without hvs-api-client=true: expected wget to fail (exit 42), got $rc;" \
  "0 means the NetworkPolicy is not enforced (kind >= 0.24 enforces it: check kind version)"
pass "a pod without the label does not reach the API"

# HvsApiDown (cause no-target) with the given status, on the receiver's route "pages" (the
# AlertmanagerConfig's lab-pages webhook), received since $since.
forward monitoring hvs-alert-receiver 9095 >"${TMPDIR:-/tmp}/hvs-smoke-port"
receiver_port=$(cat "${TMPDIR:-/tmp}/hvs-smoke-port")
receiver_has_api_down() {
  curl -fsS "http://127.0.0.1:$receiver_port/alerts" | STATUS=$1 SINCE=$since python3 -c '
import json, os, sys
hits = [a for a in json.load(sys.stdin)
        if a["alertname"] == "HvsApiDown" and a["labels"].get("cause") == "no-target"
        and a["route"] == "pages" and a["status"] == os.environ["STATUS"]
        and a["received_at"] >= os.environ["SINCE"]]
sys.exit(0 if hits else 1)'
}

# The chart's own Watchdog, routed by k8s/helm-values-alerting.yaml to the heartbeat route (the
# chart's default sends it to "null"): the receiver's heartbeat is "ok" once one has arrived.
heartbeat_ok() {
  curl -fsS "http://127.0.0.1:$receiver_port/heartbeat" | python3 -c '
import json, sys
sys.exit(0 if json.load(sys.stdin)["state"] == "ok" else 1)'
}
step "5. The chart's Watchdog reaches the alert receiver's heartbeat"
until_true 300 "the receiver's heartbeat is ok" heartbeat_ok

step "6. The API scaled to zero: HvsApiDown pages (absent for 5 min, then Alertmanager's group_wait)"
since=$(utc_now)
kubectl scale deployment/hvs-api -n default --replicas=0
until_true 720 "HvsApiDown (cause no-target) fires and reaches the receiver's route pages" \
  receiver_has_api_down firing

step "7. The API back at two replicas (the HPA does not scale up from zero by itself)"
since=$(utc_now)
kubectl scale deployment/hvs-api -n default --replicas=2
kubectl rollout status deployment/hvs-api -n default --timeout=5m
# Alertmanager sends the resolved notification at the group's next group_interval (5 min).
until_true 600 "HvsApiDown (cause no-target) resolves at the receiver" \
  receiver_has_api_down resolved

step "All checks passed"
