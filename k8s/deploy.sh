#!/usr/bin/env bash
# make k8s-deploy: build the API's image, make it visible to the current cluster (kind or Docker
# Desktop), apply the lab, and roll its pods onto the image just built. Each step is a plain
# command: docs/kubernetes.md shows the same ones in order.
set -euo pipefail
cd "$(dirname "$0")/.."
OVERLAY=${OVERLAY:-k8s/overlays/local}
IMAGE=hvs-prediction-api

# 1. The image, with its model, tagged by its content: the image id, so that an unchanged build
#    keeps its tag and a changed one gets a new tag. (":latest" with IfNotPresent would leave the
#    pod spec as it was, and the pods on the old image.)
docker build -f api/Dockerfile -t "$IMAGE:latest" .
TAG=$(docker image inspect --format '{{.Id}}' "$IMAGE:latest" | cut -d: -f2 | cut -c1-12)
docker tag "$IMAGE:latest" "$IMAGE:$TAG"
echo "image $IMAGE:$TAG"

# 2. Visible to the cluster. A kind node has a containerd of its own: load an archive into it
#    (`kind load docker-image` fails with Docker's containerd image store, the default in current
#    Docker). Docker Desktop's Kubernetes runs on the engine that built the image and sees it.
CONTEXT=$(kubectl config current-context)
case "$CONTEXT" in
  kind-*)
    ARCHIVE=$(mktemp "${TMPDIR:-/tmp}/hvs-api-image.XXXXXX")
    trap 'rm -f "$ARCHIVE"' EXIT
    docker image save --output "$ARCHIVE" "$IMAGE:$TAG" "$IMAGE:latest"
    kind load image-archive "$ARCHIVE" --name "${CONTEXT#kind-}"
    ;;
  docker-desktop) ;;
  *)
    echo "kubectl context $CONTEXT is neither kind nor Docker Desktop: push $IMAGE:$TAG to a" \
      "registry the cluster pulls from and name it in an overlay's images: instead" >&2
    exit 1
    ;;
esac

# 3. The lab, then its pods on the content tag. A later `kubectl apply -k` leaves an image set
#    this way alone (the manifests' own value has not changed), so it never rolls pods back.
kubectl apply -k "$OVERLAY"
kubectl set image deployment/hvs-api "*=$IMAGE:$TAG"
kubectl set image --namespace monitoring deployment/hvs-alert-receiver "*=$IMAGE:$TAG"
kubectl rollout status deployment/hvs-api --timeout 5m
kubectl rollout status --namespace monitoring deployment/hvs-alert-receiver --timeout 5m
