#!/usr/bin/env bash
# Deletes the kind cluster made by kind-up.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source e2e/kind/lib.sh
need kind "to delete the cluster"
kind delete cluster --name "$KIND_CLUSTER"
