#!/usr/bin/env bash
# Checks the packaging: CRD copies, both Helm charts (lint, render, snapshot), the plain install
# in manifests/ and every object against the Kubernetes 1.33 schemas, without a helm binary.
#   scripts/check-packaging.sh          # verify, changes nothing (CI)
#   scripts/check-packaging.sh --fix    # rewrite CRD copies, chart snapshots, manifests/install/operator.yaml
# The Python tools go into a venv under ${RINGSTORE_TOOLS_CACHE:-$HOME/.cache/ringstore-tools},
# made once per version of scripts/packaging-requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  "" | --fix) ;;
  *) echo "usage: $0 [--fix]" >&2; exit 2 ;;
esac

# the helper prints the total time, setup included
export CHECK_PACKAGING_STARTED=$EPOCHSECONDS
cache="${RINGSTORE_TOOLS_CACHE:-$HOME/.cache/ringstore-tools}"
requirements=scripts/packaging-requirements.txt
key=$(sha256sum "$requirements" | cut -c1-12)
venv="$cache/packaging-venv-$key"

if [[ ! -f "$venv/.ready" ]]; then
  command -v python3 >/dev/null || { echo "check-packaging: python3 is required" >&2; exit 1; }
  echo "== preparing the Python tools in $venv (once)"
  rm -rf "$cache"/packaging-venv-*  # older versions of the requirements
  mkdir -p "$cache"
  python3 -m venv "$venv"
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"; then
    echo "check-packaging: cannot install $requirements into $venv" >&2
    exit 1
  fi
  # the wheel carries Helm's 80 MB library three times (wheels have no symlinks): keep one
  for full in "$venv"/lib/python3*/site-packages/helm_python/lib/libhelm_c.so.*.*.*; do
    [[ -f "$full" ]] || continue
    for alias in "${full%.*.*}" "${full%.*.*.*}"; do
      if [[ -f "$alias" && ! -L "$alias" ]] && cmp -s "$alias" "$full"; then
        ln -sf "$(basename "$full")" "$alias"
      fi
    done
  done
  touch "$venv/.ready"
fi

exec "$venv/bin/python" scripts/check_packaging.py "$@"
