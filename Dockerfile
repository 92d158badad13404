# One image for the offline jobs and the service (Triton runs in its own NGC image; see deploy/).
# Not built in CI: these machines have no Docker engine. The same set-up script as `make` runs here.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY deploy/setup-debian.sh deploy/
COPY facevoice facevoice
COPY service service
COPY training training
# torch first (CPU build), then the project; EXTRAS=gpu on a CUDA host adds faiss-gpu. No local
# tritonserver (SKIP_TRITON): Triton runs in its own NGC image.
ARG EXTRAS=dev
RUN SKIP_APT=1 SKIP_TRITON=1 VENV=/opt/venv EXTRAS=${EXTRAS} bash deploy/setup-debian.sh \
 && rm -rf /root/.cache/pip

ENV PATH=/opt/venv/bin:$PATH
RUN useradd --create-home facevoice && mkdir /data && chown facevoice /data
USER facevoice
VOLUME /data
ENTRYPOINT ["facevoice"]
CMD ["demo", "--out", "/data/demo"]
