# One image for the ringkv node and its Kubernetes operator; only the command differs.
#
#   node (default):  ringkv node          every flag is also a RINGKV_* variable (see `ringkv node --help`);
#                    it needs its certificates (RINGKV_CERTS_DIR: ca.crt, node.crt, node.key, tokens; made by
#                    `ringkv certs`, or mounted by the operator) or RINGKV_INSECURE=true (docs/security.md)
#   operator:        kopf run -m ringkv_operator.handlers --all-namespaces --standalone \
#                         --liveness=http://0.0.0.0:8080/healthz
#
# Build:  docker build -t ringkv:0.1.0 .     (or podman build)
#
# Stages: `base` is the only FROM that names an image, so `podman build --from IMAGE` (which replaces the first
# FROM) swaps the Python base of every stage; tests/integration/test_image.py does that with a local Debian
# bookworm + python3 image. The builder makes a venv with `python3 -m venv` (works on python:3.11-slim and on
# Debian's python3-venv alike); the final stage gets only that venv: no compilers, no pip, no caches.
# No HEALTHCHECK: Kubernetes probes /ready and /health (node) or kopf's /healthz (operator).

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8

FROM base AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/ringkv
# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes. Wheels only, so no
# compiler is needed (every dependency publishes manylinux wheels).
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && /opt/ringkv/bin/python -m pip install -q --only-binary=:all: -r /tmp/requirements.txt "setuptools>=68" wheel
# Then ringkv itself (packages ringkv and ringkv_operator): a wheel built from the source, installed without
# touching the dependencies; pip, setuptools and wheel then leave the venv, which is all the final stage gets.
COPY README.md /src/
COPY node /src/node
COPY operator /src/operator
RUN /opt/ringkv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w /tmp/wheels /src \
 && /opt/ringkv/bin/python -m pip install -q --no-deps /tmp/wheels/ringkv-*.whl \
 && /opt/ringkv/bin/python -m pip check \
 && /opt/ringkv/bin/python -m pip uninstall -y -q pip setuptools wheel \
 && /opt/ringkv/bin/ringkv --version \
 && /opt/ringkv/bin/python -c "import kopf, ringkv_operator"

FROM base
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ringkv" \
      org.opencontainers.image.description="ringkv: a Dynamo-style distributed key-value store (node and Kubernetes operator)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="ringkv" \
      org.opencontainers.image.base.name="python:3.11-slim"
RUN groupadd --gid 10001 ringkv \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/ringkv --shell /usr/sbin/nologin ringkv \
 && mkdir -p /var/lib/ringkv \
 && chown 10001:10001 /var/lib/ringkv \
 && chmod 0750 /var/lib/ringkv
COPY --from=builder /opt/ringkv /opt/ringkv
ENV PATH=/opt/ringkv/bin:$PATH \
    RINGKV_HOST=0.0.0.0 \
    RINGKV_PORT=8080 \
    RINGKV_PEER_PORT=7070 \
    RINGKV_DATA_DIR=/var/lib/ringkv
USER 10001:10001
WORKDIR /var/lib/ringkv
VOLUME ["/var/lib/ringkv"]
# 8080: HTTP API, /health, /ready, /metrics (the operator's /healthz too); 7070: internode (peer) TCP.
EXPOSE 8080 7070
CMD ["ringkv", "node"]
