# syntax=docker/dockerfile:1
# quantroute images. The default target is the gateway: the package and its runtime dependencies
# only (no extras: no OpenAI client, no matplotlib), in a virtualenv without pip, on a slim Python
# base, as an unprivileged user. Target `profiler` adds the profiler extra for
# `quantroute profile` and `quantroute matrix plot`.
#
#   docker build -t quantroute:0.1.0 .
#   docker build --target profiler -t quantroute:0.1.0-profiler .
#   docker run -p 8080:8080 -v "$PWD/gateway.yaml:/etc/quantroute/gateway.yaml:ro" quantroute:0.1.0
#
# scripts/build-image builds both the same way with Docker or podman, and on a local Debian base
# (--build-arg PYTHON_IMAGE=...) where no container registry is reachable.
#
# The gateway reads its config from $QUANTROUTE_CONFIG (default: the example baked in below; on
# Kubernetes a ConfigMap is mounted over /etc/quantroute). Extra arguments to `docker run` are
# appended to `quantroute serve`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# binutils for `strip`: the wheels' compiled extensions carry debug symbols (uvloop alone 12 MB).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/pip \
    && python -m venv --without-pip /opt/quantroute
WORKDIR /src
COPY deploy/docker/venv.sh ./
# The dependencies first, in their own stages: a change to the source alone rebuilds only the
# stages below and the image's last layer (quantroute's own files).
# EXTRAS adds extras to both images, e.g. --build-arg EXTRAS=redis for Responses API
# conversations shared by several replicas (conversations.redis_url), EXTRAS=tracing for the
# OpenTelemetry exporter (deploy/components/tracing needs it).
COPY pyproject.toml ./
ARG EXTRAS=""
RUN sh venv.sh deps "$EXTRAS"

FROM deps AS deps-profiler
ARG EXTRAS=""
RUN sh venv.sh deps "profiler $EXTRAS"

# quantroute itself, no extras.
FROM deps AS build
COPY README.md ./
COPY src ./src
RUN sh venv.sh package

FROM deps-profiler AS build-profiler
COPY README.md ./
COPY src ./src
RUN sh venv.sh package

# What both images share: the user, the example config, the environment.
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
LABEL org.opencontainers.image.title="quantroute" \
      org.opencontainers.image.description="Routing gateway for self-hosted quantized LLM fleets on vLLM" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# Nothing outside /tmp stays writable for the user (the base leaves /var/tmp and /run/lock open).
RUN groupadd --gid 10001 quantroute \
    && useradd --no-log-init --uid 10001 --gid quantroute --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin quantroute \
    && find / -xdev -type d -perm -o+w ! -path /tmp -exec chmod o-w {} +
COPY deploy/docker/gateway.yaml /etc/quantroute/gateway.yaml
ENV PATH=/opt/quantroute/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    QUANTROUTE_CONFIG=/etc/quantroute/gateway.yaml
USER 10001:10001

FROM runtime AS profiler
COPY --from=deps-profiler /opt/quantroute /opt/quantroute
COPY --from=build-profiler /opt/quantroute-package/ /
ENV MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /tmp
ENTRYPOINT ["quantroute"]
CMD ["profile", "--help"]

# The gateway, the default target (last).
FROM runtime AS gateway
# The dependencies, then quantroute's own files (about 2 MB): a new release that changes only
# quantroute rebuilds and ships that small layer alone.
COPY --from=deps /opt/quantroute /opt/quantroute
COPY --from=build /opt/quantroute-package/ /
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]
# A shell only to expand $QUANTROUTE_CONFIG; `exec` replaces it, so quantroute runs as PID 1,
# receives SIGTERM itself and drains its streams before exiting.
ENTRYPOINT ["/bin/sh", "-c", "exec quantroute serve --config \"$QUANTROUTE_CONFIG\" --host 0.0.0.0 --port 8080 \"$@\"", "quantroute"]
CMD []
