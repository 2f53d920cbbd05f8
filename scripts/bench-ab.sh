#!/usr/bin/env bash
# A/B cluster benchmark: this tree's build against another commit's, alternately in one run
# (see BENCH_BASE in scripts/bench-cluster.sh).
#   scripts/bench-ab.sh [REV]     REV defaults to HEAD~1; BENCH_ROUNDS defaults to 4 here
# The other commit is checked out in a git worktree and built with a target directory of its
# own (kept under target/bench-base, so a second run against the same commit builds nothing):
# sharing this tree's target directory would let cargo mistake one tree's crates for the
# other's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
REV="${1:-HEAD~1}"
cd "$ROOT"
SHA="$(git rev-parse --verify "$REV^{commit}")" || { echo "bench-ab: no commit $REV" >&2; exit 2; }
BASE_DIR="$TARGET_DIR/bench-base"
TREE="$BASE_DIR/tree-$SHA"
BIN="$BASE_DIR/ringstore-$SHA"
if [ ! -x "$BIN" ]; then
    mkdir -p "$BASE_DIR"
    [ -d "$TREE" ] || git worktree add --detach "$TREE" "$SHA" >&2
    echo "bench-ab: building the base $SHA (release)" >&2
    (cd "$TREE" && CARGO_TARGET_DIR="$BASE_DIR/target" cargo build --release -p ringstore-server)
    cp "$BASE_DIR/target/release/ringstore" "$BIN"
    git worktree remove --force "$TREE"
fi
BENCH_BASE="$BIN" BENCH_ROUNDS="${BENCH_ROUNDS:-4}" exec scripts/bench-cluster.sh
