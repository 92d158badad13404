#!/usr/bin/env bash
# The sharded index build on one machine: the same shards as deploy/k8s/sharded-build/, one after
# another, then the merge. Killed, it resumes: finished shards are skipped, a shard's kept batches
# reused, and nothing is published before the merge.
#   deploy/sharded-build.sh N MANIFEST MODEL_REPO INDEX_ROOT [index merge options, e.g. --memory-budget 8GB]
set -euo pipefail
n=${1:?usage: $0 N MANIFEST MODEL_REPO INDEX_ROOT [index merge options]}
common=(--gallery "${2:?manifest}" --model-repo "${3:?model repository}" --out "${4:?index root}")
shift 4
for ((i = 0; i < n; i++)); do
  python -m facevoice index build "${common[@]}" --shard "$i/$n"
done
python -m facevoice index merge "${common[@]}" --shards "$n" "$@"
