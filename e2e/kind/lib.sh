# Shared by the kind scripts: settings and checks for the tools they need.
# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this
KIND_CLUSTER=${KIND_CLUSTER:-ringstore}
IMAGE_TAG=${IMAGE_TAG:-dev}
NODE_IMAGE=ringstore:$IMAGE_TAG
OPERATOR_IMAGE=ringstore-operator:$IMAGE_TAG
OPERATOR_NAMESPACE=ringstore-system
KUBE_CONTEXT=kind-$KIND_CLUSTER

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

# need TOOL WHY: fail with a clear message when TOOL is not installed.
need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is required ($2) but is not installed or not on PATH"
}

kc() {
  kubectl --context "$KUBE_CONTEXT" "$@"
}
