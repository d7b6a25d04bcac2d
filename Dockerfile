# smartgate container image: one process, `smartgate serve`.
# Envoy runs in its own container from the official image (envoyproxy/envoy:v1.40.0); see charts/smartgate.

# --- build stage: build the wheel and install it with its dependencies into a virtualenv ---
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service

RUN python -m venv /opt/smartgate \
 && /opt/smartgate/bin/pip install --no-cache-dir "setuptools>=77" wheel \
 && /opt/smartgate/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/smartgate/bin/pip install --no-cache-dir /wheels/*.whl \
 && /opt/smartgate/bin/pip uninstall --yes setuptools wheel pip \
 && /opt/smartgate/bin/smartgate --help > /dev/null

# --- final stage: the same slim base, the virtualenv, a non-root user; no compilers, no build tools ---
FROM python:3.11.11-slim-bookworm

LABEL org.opencontainers.image.title="smartgate" \
      org.opencontainers.image.description="SMART on FHIR authorization sidecar for Envoy (ext_authz)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

RUN groupadd --system --gid 10001 smartgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin smartgate

COPY --from=build /opt/smartgate /opt/smartgate

ENV PATH="/opt/smartgate/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SMARTGATE_CONFIG=/etc/smartgate/smartgate.yaml

USER 10001:10001
# gRPC ext_authz + health (9191), HTTP metrics, /healthz, /readyz, SMART discovery (9190)
EXPOSE 9191 9190
ENTRYPOINT ["smartgate"]
CMD ["serve", "--config", "/etc/smartgate/smartgate.yaml"]
