#!/usr/bin/env bash
# Everything facevoice needs on a fresh Debian 12 machine, idempotently: system packages, a
# virtual environment with torch installed FIRST (the CPU build; any other order pulls GBs of
# CUDA wheels), then the project itself. Used by `make demo`, `make test`, .ci/run and the
# Dockerfile. VENV and EXTRAS may be overridden; SKIP_APT=1 leaves system packages alone;
# SKIP_TRITON=1 leaves out the local tritonserver (tests and benchmarks need it, images do not).
set -euo pipefail
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-dev,baselines}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
APT_PACKAGES=(espeak-ng redis-server python3-venv openssl prometheus postgresql chromium chromium-driver nodejs npm nginx)

missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)  # the TLS test makes a certificate
command -v promtool >/dev/null || missing+=(prometheus)  # tests scrape the service and check deploy/prometheus
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3 python3-venv)
# the human study (study/): its tests start a throw-away PostgreSQL and drive headless Chromium;
# its pages need jsPsych from npm
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)  # the study's TLS proxy, tested for real
if ((${#missing[@]})) && [ "${SKIP_APT:-0}" != 1 ]; then
  echo "setup: installing ${missing[*]} (of ${APT_PACKAGES[*]})"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # no recommends: prometheus would bring node-exporter, which takes port 9100 and starts itself;
  # and no daemon is started by a package (nginx would take port 80): the tests start their own
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null && $sudo chmod +x /usr/sbin/policy-rc.d
    guard=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$guard" ]; then $sudo rm -f /usr/sbin/policy-rc.d; fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_SPEC#torch==}')" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC first"
  "${pip[@]}" "$TORCH_SPEC"
fi
echo "setup: installing facevoice[$EXTRAS]"
"${pip[@]}" -e ".[$EXTRAS]"
if [[ ",$EXTRAS," == *",baselines,"* ]]; then  # the frozen speaker encoder of `eval frozen` (pyproject.toml)
  "${pip[@]}" --no-deps "resemblyzer==0.1.4"
fi

# Real recordings for the media tests (tests/real_media.py), shipped inside two PyPI packages (no
# data set is downloaded): CMU ARCTIC speech in pysptk's source package, music and sound effects
# in pygame's wheel. Only the files are taken; neither package is installed.
MEDIA="$VENV/share/facevoice-test-media"
if [[ ",$EXTRAS," == *",dev,"* ]] && [ ! -f "$MEDIA/.complete" ]; then
  echo "setup: extracting real recordings for the media tests into $MEDIA"
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps -d "$tmp" "pysptk==1.0.1"
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: -d "$tmp" "pygame==2.6.1"
  "$VENV/bin/python" - "$tmp" "$MEDIA" <<'PY'
import pathlib, sys, tarfile, zipfile
src, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
with tarfile.open(next(src.glob("pysptk-*.tar.gz"))) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("example_audio_data/arctic_a0007.wav"))
    (dest / "arctic_a0007.wav").write_bytes(t.extractfile(member).read())
with zipfile.ZipFile(next(src.glob("pygame-*.whl"))) as z:
    for name in ("house_lo.wav", "house_lo.ogg", "secosmic_lo.wav", "boom.wav", "punch.wav", "whiff.wav"):
        (dest / name).write_bytes(z.read(f"pygame/examples/data/{name}"))
(dest / ".complete").touch()
PY
  rm -rf "$tmp"
fi

# The real tritonserver for tests and the demo's Triton path. nvidia-pytriton's Python API pins
# numpy<2, which we do not use: take only its server binary (--no-deps). Its python-backend stub
# needs NumPy 1.x, so the models' numpy and onnxruntime live in their own site directory.
if [ "${SKIP_TRITON:-0}" != 1 ]; then
  "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('pytriton') is None)" || {
    echo "setup: installing nvidia-pytriton (tritonserver binary only)"
    "${pip[@]}" --no-deps --no-warn-conflicts "nvidia-pytriton==0.7.0"
  }
  if [ ! -f "$VENV/triton-site/.complete" ]; then
    echo "setup: installing numpy<2 + onnxruntime for Triton's python backend into $VENV/triton-site"
    rm -rf "$VENV/triton-site"
    "${pip[@]}" --no-warn-conflicts --target "$VENV/triton-site" "numpy<2" "onnxruntime>=1.18"
    touch "$VENV/triton-site/.complete"
  fi
fi

# jsPsych for the study's pages, from npm (package-lock.json pins it); served from study/web, never a CDN
if [ ! -f study/web/node_modules/.package-lock.json ] || [ study/web/package-lock.json -nt study/web/node_modules/.package-lock.json ]; then
  echo "setup: installing jsPsych into study/web/node_modules"
  npm ci --prefix study/web --no-audit --no-fund --loglevel=error
fi
