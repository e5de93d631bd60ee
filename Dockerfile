# syntax=docker/dockerfile:1
# stream-vae image: scorer worker, trainer and the CLI (one image, the verb picks the role).
#
#   docker build -t stream-vae:dev .
#   docker run --rm stream-vae:dev --help
#
# Runs as uid/gid 10001 with a read-only root filesystem in mind: everything it writes goes to
# /tmp (an emptyDir in Kubernetes, a tmpfs in docker-compose) or /data (demo data volume).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/stream-vae
ENV PATH=/opt/stream-vae/bin:$PATH
# torch first, pinned, CPU wheel: an open range would pull a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
# README.md* : the readme is optional for the build (the glob lets COPY succeed without it).
COPY pyproject.toml README.md* ./
COPY stream_vae ./stream_vae
RUN pip install . \
 && pip check \
 && python -c "import torch, stream_vae; assert torch.version.cuda is None, 'not the CPU build of torch'"

FROM ${PYTHON_IMAGE} AS runtime
# Everything written at run time goes under /tmp (faust's data dir included): the root filesystem
# is read-only in Kubernetes and docker-compose.
ENV PATH=/opt/stream-vae/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    FAUST_DATADIR=/tmp/{conf.name}-data \
    STREAM_VAE_TOPOLOGY_DIR=/etc/stream-vae/topologies
RUN groupadd --system --gid 10001 stream-vae \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin stream-vae \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /opt/stream-vae /opt/stream-vae
COPY topologies/ /etc/stream-vae/topologies/
# Relative topology paths (`--topology topologies/demo.yaml`) resolve against this directory.
WORKDIR /etc/stream-vae
USER 10001:10001
# /healthz, /readyz and /metrics (STREAM_VAE_WORKER__HTTP_PORT)
EXPOSE 8080
ENTRYPOINT ["stream-vae"]
CMD ["worker", "--topology", "/etc/stream-vae/topologies/demo.yaml"]
