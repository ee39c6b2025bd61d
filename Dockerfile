# syntax=docker/dockerfile:1
#
# simplivity-exporter: a Prometheus exporter for HPE SimpliVity backups.
#
#   docker build -t simplivity-exporter .
#   docker run --rm -p 10025:10025 simplivity-exporter --demo --web.listen-address=:10025
#   docker run --rm -p 10025:10025 \
#     -v "$PWD/config.yaml:/etc/simplivity-exporter/config.yaml:ro" \
#     -e SVT_PASSWORD simplivity-exporter
#
# No config and no secret is baked in: mount the config at the path CMD names (or pass
# other flags), and give passwords through ${VAR} or password_file.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: the project's wheel, and a venv of exactly the locked dependencies ----
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY requirements.lock requirements-build.lock /src/
COPY pyproject.toml README.md LICENSE /src/
COPY exporter/ /src/exporter/

# Every version and every file's hash comes from the lock files (deploy/update-locks writes
# them): nothing is resolved at build time. Wheels only, so no compiler is needed (bcrypt, the
# basic-auth extra, ships manylinux wheels). The build backend gets a venv of its own, so
# that nothing a build needed ends up in the image; pip check proves the lock is complete.
RUN python -m venv /opt/build \
    && /opt/build/bin/python -m pip install --no-cache-dir --require-hashes --no-deps \
       --only-binary=:all: -r /src/requirements-build.lock \
    && /opt/build/bin/python -m pip wheel --no-cache-dir --no-build-isolation --no-deps \
       --wheel-dir /wheels /src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir --require-hashes --no-deps \
       --only-binary=:all: -r /src/requirements.lock \
    && /opt/venv/bin/python -m pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
    && /opt/venv/bin/python -m pip check \
    && /opt/venv/bin/simplivity-exporter --help > /dev/null

# ---- final: the venv on a clean base, run as an unprivileged user ----
FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
# exporter/__init__.py's __version__, which a Dockerfile cannot read: a test keeps them equal.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="simplivity-exporter" \
      org.opencontainers.image.description="Prometheus exporter for HPE SimpliVity backups" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/${PYTHON_IMAGE}"

# A fixed numeric UID/GID, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin exporter

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIMPLIVITY_EXPORTER_HEALTHCHECK_URL="http://127.0.0.1:10025/-/healthy"

USER 10001:10001

EXPOSE 10025

# The exporter checks itself (no curl in the image). With another port, TLS or basic
# auth, set SIMPLIVITY_EXPORTER_HEALTHCHECK_URL when running the container, e.g.
# https://prober:PASSWORD@127.0.0.1:10025/-/healthy (plus
# SIMPLIVITY_EXPORTER_HEALTHCHECK_INSECURE_SKIP_VERIFY=true for a self-signed certificate).
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
    CMD ["python", "-m", "exporter.healthcheck"]

ENTRYPOINT ["simplivity-exporter"]
CMD ["--config.file=/etc/simplivity-exporter/config.yaml"]
