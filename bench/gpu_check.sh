#!/usr/bin/env bash
# The checks a lent GPU machine is for, in under 8 minutes, figures written to a file.
#   bash bench/gpu_check.sh [--smoke] [--out DIR] [bench.gpu_check options]
# On a GPU host (CUDA PyTorch, no package registry, nothing of ours installed), from a copy of
# the repository: OUT=DIR bash bench/gpu_check.sh --out DIR
# --smoke runs every part with tiny shapes on this CPU (tests/test_gpu_check.py does, in CI).
# No wheel is needed there: onnxruntime-gpu's wheel is too large to carry to such a host, so the
# encoders are timed with TorchScript and torch.compile instead.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu-check}
pass=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    *) pass+=("$1"); shift ;;
  esac
done
py=${PYTHON:-python3}
if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $py -c "import facevoice.training" 2>/dev/null; then
  # not installed: pyproject maps service/, training/ and study/ under facevoice.*; a tree of links does the same
  tree=$(mktemp -d)
  mkdir "$tree/facevoice"
  for f in facevoice/*; do ln -s "$PWD/$f" "$tree/facevoice/"; done
  for d in service training study; do ln -s "$PWD/$d" "$tree/facevoice/$d"; done
  export PYTHONPATH=$tree:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
mkdir -p "$out"
status=0
timeout 470 "$py" -m bench.gpu_check --out "$out" "${pass[@]}" 2>&1 | tee "$out/gpu_check.log" || status=$?
echo "gpu_check: exit $status; figures in $out/gpu_check.json and $out/gpu_check.md"
exit $status
