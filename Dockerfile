# syntax=docker/dockerfile:1
# The facevoice service and the index rebuild job: one image, no torch (the online path never
# imports training code). Triton runs in its own NGC image (deploy/compose.yaml); training runs
# with `make demo` / the `facevoice train` commands on a training host.
#
#   docker build -t facevoice:0.1.0 .                              # faiss-cpu
#   docker build --build-arg VARIANT=gpu -t facevoice:0.1.0-gpu .  # faiss-gpu-cu12 (CUDA from wheels)
#   docker build --target study -t facevoice-study:0.1.0 .        # the human study's server (docs/study.md)
#
# Built, run as its own user and queried on every CI run by deploy/image-test.sh (with buildah, on
# a base made from Debian's packages: these machines have no Docker engine); tests/test_deploy.py
# checks the rest without building (paths, entrypoint, ports, health check).
#
# Small (deploy/README.md, "The image"): the venv holds the online path's packages only, with the
# dlib weights the face front ends load and not the rest of face-recognition-models, no scipy
# (service.media resamples in numpy), no pip, no tests, no caches, and stripped extension modules
# (not the libraries wheels vendor under *.libs: auditwheel's patched ELF files break when
# stripped); the
# service's stage starts from scratch with one copy of a cleaned root, so nothing deleted stays in
# a lower layer.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY deploy/requirements-service.txt /tmp/requirements-service.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements-service.txt
# the variant after the common layer, so both variants share it (faiss-gpu-cu12's newest is 1.14.1)
ARG VARIANT=cpu
ARG FAISS_GPU=faiss-gpu-cu12==1.14.1.post1
RUN if [ "$VARIANT" = gpu ]; then \
      /opt/venv/bin/pip uninstall -y faiss-cpu && /opt/venv/bin/pip install "$FAISS_GPU"; \
    fi
# the Milvus gallery backend's client (pymilvus pulls pandas: about 90 MB), only when asked for
ARG MILVUS=no
ARG PYMILVUS=pymilvus==3.0.2
RUN if [ "$MILVUS" = yes ]; then /opt/venv/bin/pip install "$PYMILVUS"; fi
COPY pyproject.toml README.md /src/
COPY facevoice /src/facevoice
COPY service /src/service
# the offline path's source comes along (the package lists it) but not torch: its verbs say so
COPY training /src/training
# the study's server code comes along too (its own image, `--target study`, adds fastapi/uvicorn and jsPsych)
COPY study /src/study
RUN /opt/venv/bin/pip install --no-deps /src
# what the online path never loads: face-recognition-models' weights but the CNN detector and the
# 5-point landmarks (service/media/faces.py), onnxruntime's offline tools, tests, caches
RUN set -e; sp=/opt/venv/lib/python3.11/site-packages; \
    find $sp/face_recognition_models/models -type f ! -name mmod_human_face_detector.dat \
      ! -name shape_predictor_5_face_landmarks.dat -delete; \
    rm -rf $sp/onnxruntime/transformers $sp/onnxruntime/quantization $sp/onnxruntime/tools; \
    find /opt/venv -depth -type d \( -name __pycache__ -o -name tests -o -name testing \) -exec rm -rf {} +; \
    if command -v apt-get >/dev/null; then \
      apt-get update -qq && apt-get install -y -qq --no-install-recommends binutils >/dev/null; \
      find /opt/venv -name "*.so*" -type f ! -path "*.libs/*" -exec strip --strip-unneeded {} + 2>/dev/null || true; \
    fi

# the human study's pages: jsPsych from npm, pinned by its lock file, served by the study itself
FROM node:20-bookworm-slim AS study-pages
COPY study/web/package.json study/web/package-lock.json /web/
RUN npm ci --prefix /web --no-audit --no-fund --loglevel=error

FROM build AS study-build
RUN /opt/venv/bin/pip install "fastapi==0.165.0" "uvicorn==0.55.0" "psycopg[binary]==3.3.9"

# `docker build --target study`: `facevoice study serve` on /study (its study.toml, corpus and
# recordings: a volume), PostgreSQL given by --database, behind the TLS proxy (deploy/compose.yaml)
FROM ${PYTHON_IMAGE} AS study
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin facevoice && mkdir /study && chown facevoice /study
COPY --from=study-build /opt/venv /opt/venv
COPY --from=study-pages /web/node_modules /opt/venv/lib/python3.11/site-packages/facevoice/study/web/node_modules
USER 10001
EXPOSE 8600
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8600/api/study', timeout=4)"]
ENTRYPOINT ["facevoice"]
CMD ["study", "serve", "--study", "/study", "--host", "0.0.0.0"]

# the service's root, cleaned: no package manager's caches or lists, no docs, man pages or
# locales, no pip; /tmp is not writable (the service writes only under /indexes, and only the
# rebuild job does)
FROM ${PYTHON_IMAGE} AS service-root
COPY --from=build /opt/venv /opt/venv
RUN set -e; sp=/opt/venv/lib/python3.11/site-packages; \
    rm -rf $sp/pip $sp/pip-* $sp/setuptools $sp/setuptools-* $sp/_distutils_hack $sp/distutils-precedence.pth \
      /opt/venv/bin/pip*; \
    useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin facevoice; \
    mkdir -p /models /indexes && chown facevoice /indexes && chmod 0755 /tmp /var/tmp; \
    rm -rf /var/lib/apt/lists/* /var/cache/* /var/log/* /usr/share/doc/* /usr/share/man/* /usr/share/info/* \
      /usr/share/locale/* /usr/share/lintian /usr/share/python-wheels /root/.cache; \
    for lib in /usr/lib/python3.11 /usr/local/lib/python3.11; do \
      [ -d $lib ] && rm -rf $lib/ensurepip $lib/idlelib $lib/lib2to3 $lib/pydoc_data $lib/tkinter \
        $lib/turtledemo $lib/test || true; \
      [ -d $lib ] && find $lib -depth -type d -name __pycache__ -exec rm -rf {} + || true; \
    done

FROM scratch
COPY --from=service-root / /
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    FACEVOICE_MODEL_REPO=/models FACEVOICE_INDEX_ROOT=/indexes \
    FACEVOICE_PORT=50051 FACEVOICE_METRICS_PORT=9464
USER 10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["facevoice", "health", "--server", "127.0.0.1:50051"]
ENTRYPOINT ["facevoice"]
CMD ["serve"]
