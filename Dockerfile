# syntax=docker/dockerfile:1
# quantroute gateway image: build the wheel's dependencies into a virtualenv, copy only that
# virtualenv into a slim runtime stage, run as an unprivileged user.
#
#   docker build -t quantroute:0.1.0 .
#   docker run -p 8080:8080 -v "$PWD/gateway.yaml:/etc/quantroute/gateway.yaml:ro" quantroute:0.1.0
#
# The gateway reads its config from $QUANTROUTE_CONFIG (default: the example baked in below; on
# Kubernetes a ConfigMap is mounted over /etc/quantroute). Extra arguments to `docker run` are
# appended to `quantroute serve`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/quantroute
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Runtime dependencies and the OpenTelemetry exporter (off unless configured: components/tracing);
# no [dev] extra.
RUN /opt/quantroute/bin/pip install --no-compile '.[tracing]' \
    && /opt/quantroute/bin/quantroute --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="quantroute" \
      org.opencontainers.image.description="Routing gateway for self-hosted quantized LLM fleets on vLLM" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 quantroute \
    && useradd --system --uid 10001 --gid quantroute --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin quantroute
COPY --from=build /opt/quantroute /opt/quantroute
COPY deploy/docker/gateway.yaml /etc/quantroute/gateway.yaml
ENV PATH=/opt/quantroute/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    QUANTROUTE_CONFIG=/etc/quantroute/gateway.yaml
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]
# A shell only to expand $QUANTROUTE_CONFIG; `exec` replaces it, so quantroute runs as PID 1,
# receives SIGTERM itself and drains its streams before exiting.
ENTRYPOINT ["/bin/sh", "-c", "exec quantroute serve --config \"$QUANTROUTE_CONFIG\" --host 0.0.0.0 --port 8080 \"$@\"", "quantroute"]
CMD []
