#!/usr/bin/env bash
# Creates the kind cluster (if absent), builds the node and operator images, loads them into
# the cluster and installs the operator chart with its CRDs. Idempotent: run it again after a
# code change to rebuild and roll the operator.
#   e2e/kind/kind-up.sh        (KIND_CLUSTER=ringstore IMAGE_TAG=dev by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
source e2e/kind/lib.sh

need docker "to build the images"
need kind "to run a Kubernetes cluster in Docker"
need kubectl "to talk to the cluster"
need helm "to install the operator chart (Helm 3.8 or later)"
docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer: start Docker"

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  echo "== kind cluster $KIND_CLUSTER exists"
else
  echo "== creating kind cluster $KIND_CLUSTER"
  kind create cluster --name "$KIND_CLUSTER" --config e2e/kind/kind-config.yaml --wait 180s
fi

echo "== building $NODE_IMAGE and $OPERATOR_IMAGE"
DOCKER_BUILDKIT=1 docker build --target node -t "$NODE_IMAGE" .
DOCKER_BUILDKIT=1 docker build --target operator -t "$OPERATOR_IMAGE" .

echo "== loading the images into $KIND_CLUSTER"
kind load docker-image --name "$KIND_CLUSTER" "$NODE_IMAGE" "$OPERATOR_IMAGE"

# Helm installs CRDs only on the first install: apply them first so that they are current on
# every run.
echo "== CRDs"
kc apply --server-side --force-conflicts -f charts/ringstore-operator/crds/
kc wait --for=condition=Established --timeout=60s crd/tenants.ringstore.io crd/pools.ringstore.io

echo "== operator chart"
helm --kube-context "$KUBE_CONTEXT" upgrade --install ringstore-operator charts/ringstore-operator \
  --namespace "$OPERATOR_NAMESPACE" --create-namespace \
  --set image.repository=ringstore-operator --set image.tag="$IMAGE_TAG" --set image.pullPolicy=Never \
  --set logFormat=text \
  --wait --timeout 5m
# the tag stays `dev` across rebuilds: restart so that the new image runs
kc -n "$OPERATOR_NAMESPACE" rollout restart deployment/ringstore-operator
kc -n "$OPERATOR_NAMESPACE" rollout status deployment/ringstore-operator --timeout=180s

echo "kind cluster $KIND_CLUSTER is up with the operator; next: e2e/kind/kind-e2e.sh"
