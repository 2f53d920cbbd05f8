#!/usr/bin/env bash
# End-to-end on kind (after kind-up.sh): applies the minimal example Tenant (4 servers, EC 2+2)
# with the freshly built image, waits until it is Ready, writes and reads an object with the AWS
# CLI through a port-forward, and deletes the Tenant's namespace. KEEP=1 keeps it for a look.
set -euo pipefail
cd "$(dirname "$0")/../.."
source e2e/kind/lib.sh

need kubectl "to talk to the cluster"
need aws "the AWS CLI, for the S3 put and get (pip install awscli)"
need base64 "to decode the credentials"
kc get deployment -n "$OPERATOR_NAMESPACE" ringstore-operator >/dev/null 2>&1 \
  || die "no operator in the context $KUBE_CONTEXT: run e2e/kind/kind-up.sh first"

NS=${E2E_NAMESPACE:-ringstore-e2e}
TENANT=minimal
PORT=${E2E_LOCAL_PORT:-19000}
work=$(mktemp -d)
forward=""

cleanup() {
  if [[ -n "$forward" ]]; then kill "$forward" 2>/dev/null || true; fi
  rm -rf "$work"
  if [[ "${KEEP:-0}" == 1 ]]; then
    echo "KEEP=1: the Tenant stays in the namespace $NS"
  else
    echo "== deleting the namespace $NS"
    kc delete namespace "$NS" --wait=true --timeout=5m || true
  fi
}
trap cleanup EXIT

echo "== Tenant $TENANT in the namespace $NS with image $NODE_IMAGE"
kc create namespace "$NS" --dry-run=client -o yaml | kc apply -f -
sed "s|^\(  image:\).*|\1 $NODE_IMAGE|" manifests/examples/tenant-minimal.yaml \
  | kc apply --server-side -n "$NS" -f -

echo "== waiting for the Tenant to be Ready"
if ! kc -n "$NS" wait "tenant/$TENANT" --for=condition=Ready --timeout=10m; then
  kc -n "$NS" get tenant,pool,statefulset,pod -o wide || true
  kc -n "$NS" describe "tenant/$TENANT" || true
  kc -n "$OPERATOR_NAMESPACE" logs deployment/ringstore-operator --tail=100 || true
  die "the Tenant $TENANT did not become Ready"
fi
kc -n "$NS" get tenant,pool

echo "== S3 put and get through a port-forward to the Service $TENANT"
kc -n "$NS" port-forward "svc/$TENANT" "$PORT:9000" >"$work/port-forward.log" 2>&1 &
forward=$!
for _ in $(seq 1 30); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 1
done
secret=$TENANT-credentials
AWS_ACCESS_KEY_ID=$(kc -n "$NS" get secret "$secret" -o jsonpath='{.data.accessKey}' | base64 -d)
AWS_SECRET_ACCESS_KEY=$(kc -n "$NS" get secret "$secret" -o jsonpath='{.data.secretKey}' | base64 -d)
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION=us-east-1
s3() { aws --endpoint-url "http://127.0.0.1:$PORT" s3 "$@"; }

head -c 3145728 /dev/urandom >"$work/object"
s3 mb s3://kind-e2e
s3 cp "$work/object" s3://kind-e2e/object
s3 cp s3://kind-e2e/object "$work/object.back"
cmp "$work/object" "$work/object.back" || die "the object read back differs from the one written"
s3 ls s3://kind-e2e/
echo "kind e2e passed: a 3 MiB object written and read back through the Tenant $TENANT"
