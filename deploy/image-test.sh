#!/usr/bin/env bash
# The service image built, run and queried (.ci/run calls this after `make test`):
#   1. buildah, podman and debootstrap from Debian (these machines have no Docker engine);
#   2. a Python base made from Debian's packages (python:3.11-slim cannot be pulled here),
#      with this machine's CA bundle for pip inside the build; reused when it is there;
#   3. the Dockerfile built with buildah (--isolation chroot), that base as PYTHON_IMAGE;
#   4. devtools/image_check.py: the rebuild job and the service from the image, as its own user,
#      mounted as the manifests mount them, every RPC queried and checked, what must not be in
#      the image, and where its user may write;
#   5. the GPU variant (VARIANT=gpu) built; it cannot run here (no GPU), and the output says so.
# Each part's time is printed at the end. IMAGE_TEST_GPU=0 skips part 5.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BASE=localhost/pybase-ca:bookworm
IMAGE=localhost/facevoice:ci
WORK=${IMAGE_TEST_WORK:-/var/tmp/facevoice-image}
declare -a TIMES=()
part() { local name=$1; shift; local t0=$SECONDS; echo "== image test: $name"; "$@"; TIMES+=("$(printf '%-58s %5d s' "$name" $((SECONDS - t0)))"); }

tools() {
  if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq buildah podman debootstrap >/dev/null
  fi
}

base() {
  if podman image exists "$BASE"; then echo "reusing $BASE"; return; fi
  mkdir -p "$WORK"
  rm -rf "$WORK/rootfs"
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$WORK/rootfs" "${mirror:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  tar -C "$WORK/rootfs" -c . | podman import - localhost/pybase:bookworm >/dev/null
  rm -rf "$WORK/rootfs" "$WORK/ca" && mkdir -p "$WORK/ca"
  cp /etc/ssl/certs/ca-certificates.crt "$WORK/ca/"
  printf 'FROM localhost/pybase:bookworm\nCOPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt\nENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt\n' \
    >"$WORK/ca/Containerfile"
  buildah bud --isolation chroot -q -t "$BASE" "$WORK/ca" >/dev/null
}

build() {
  # the docker format keeps the Dockerfile's HEALTHCHECK (OCI images have no place for it)
  buildah bud --isolation chroot --layers -q --format docker --build-arg PYTHON_IMAGE="$BASE" "$@"
}

check() {
  "$PY" -m devtools.image_check --image "$IMAGE"
}

gpu() {
  build --build-arg VARIANT=gpu -t localhost/facevoice:ci-gpu . >/dev/null
  size=$(podman image inspect --format '{{.Size}}' localhost/facevoice:ci-gpu)
  echo "GPU variant built: localhost/facevoice:ci-gpu, $((size / 1000000)) MB (faiss-gpu-cu12 and its CUDA libraries)."
  echo "It is not run here: these machines have no GPU."
  podman rmi -f localhost/facevoice:ci-gpu >/dev/null
}

part "buildah, podman, debootstrap" tools
part "the base image from Debian's packages" base
part "the service image (Dockerfile)" build -t "$IMAGE" .
part "the image run and queried" check
if [ "${IMAGE_TEST_GPU:-1}" != 0 ]; then part "the GPU variant built (not run: no GPU here)" gpu; fi
echo
echo "image test done; each part's time:"
printf '  %s\n' "${TIMES[@]}"
