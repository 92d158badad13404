# syntax=docker/dockerfile:1
# The facevoice service and the index rebuild job: one image, no torch (the online path never
# imports training code). Triton runs in its own NGC image (deploy/compose.yaml); training runs
# with `make demo` / the `facevoice train` commands on a training host.
#
#   docker build -t facevoice:0.1.0 .                              # faiss-cpu
#   docker build --build-arg VARIANT=gpu -t facevoice:0.1.0-gpu .  # faiss-gpu-cu12 (CUDA from wheels)
#   docker build --target study -t facevoice-study:0.1.0 .        # the human study's server (docs/study.md)
#
# Not built in CI: these machines have no Docker engine. tests/test_deploy.py checks what can be
# checked without one (paths, entrypoint, ports, health check).
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG FAISS_GPU=faiss-gpu-cu12==1.15.1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY deploy/requirements-service.txt /tmp/requirements-service.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements-service.txt \
 && if [ "$VARIANT" = gpu ]; then \
      /opt/venv/bin/pip uninstall -y faiss-cpu && /opt/venv/bin/pip install "$FAISS_GPU"; \
    fi
COPY pyproject.toml README.md /src/
COPY facevoice /src/facevoice
COPY service /src/service
# the offline path's source comes along (the package lists it) but not torch: its verbs say so
COPY training /src/training
# the study's server code comes along too (its own image, `--target study`, adds fastapi/uvicorn and jsPsych)
COPY study /src/study
RUN /opt/venv/bin/pip install --no-deps /src

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

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    FACEVOICE_MODEL_REPO=/models FACEVOICE_INDEX_ROOT=/indexes \
    FACEVOICE_PORT=50051 FACEVOICE_METRICS_PORT=9464
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin facevoice \
 && mkdir /models /indexes && chown facevoice /indexes
COPY --from=build /opt/venv /opt/venv
USER 10001
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["facevoice", "health", "--server", "127.0.0.1:50051"]
ENTRYPOINT ["facevoice"]
CMD ["serve"]
