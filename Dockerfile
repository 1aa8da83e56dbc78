# entra-tokend container image.
#
#   docker build --build-arg VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')" \
#     --build-arg REVISION="$(git rev-parse HEAD)" -t entra-tokend .
#   docker run --rm --read-only --tmpfs /run/entra-tokend:uid=65532,gid=65532,mode=0750 \
#     -e AZURE_TENANT_ID -e AZURE_CLIENT_ID -e AZURE_FEDERATED_TOKEN_FILE=/var/run/fed/token \
#     -v "$PWD/fed:/var/run/fed:ro" entra-tokend run --token arm=https://management.azure.com/.default
#
# Two stages from the same Debian release, so the venv built in the first runs on the identical
# CPython (3.11, /usr/bin/python3) of the second. The runtime stage is distroless: no shell, no
# package manager, nothing but Python, CA certificates and the venv.
#
# Reproducible inputs: Python packages come from requirements.lock / requirements-build.lock
# (pip-compile --generate-hashes; pip refuses anything whose hash is not in them), and both
# base images can be pinned by digest through these build arguments, e.g.
#   --build-arg DEBIAN_IMAGE=debian:12-slim@sha256:<digest>
#   --build-arg RUNTIME_IMAGE=gcr.io/distroless/python3-debian12:nonroot@sha256:<digest>
# README, "Updating the image's pins", says how to refresh the locks and the digests.

ARG DEBIAN_IMAGE=debian:12-slim
ARG RUNTIME_IMAGE=gcr.io/distroless/python3-debian12:nonroot

FROM ${DEBIAN_IMAGE} AS build
# Versions are left to the Debian release the tag names: they must be the ones distroless
# ships for the same release, and a pinned point release would break the build at every update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install --no-install-recommends -y python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Dependencies first, in their own layer: a source edit does not re-download them. Every
# distribution is checked against the lock's hashes; the build backend (setuptools) too, so the
# project's own install below needs nothing from the index.
COPY requirements.lock requirements-build.lock /src/
RUN python3 -m venv /opt/entra-tokend \
 && /opt/entra-tokend/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: \
      -r /src/requirements.lock -r /src/requirements-build.lock

# Only what installing the package needs (see .dockerignore): metadata, README, source root.
# The daemon alone (--no-deps: the lock supplied its dependencies; no emulator extra), then pip
# and setuptools leave the venv; nothing at runtime installs anything. The version check fails
# the build when the VERSION argument disagrees with pyproject.toml (the one place it is set).
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY daemon/ daemon/
ARG VERSION=""
RUN /opt/entra-tokend/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src \
 && /opt/entra-tokend/bin/pip uninstall -y pip setuptools \
 && /opt/entra-tokend/bin/entra-tokend --version \
 && { [ -z "${VERSION}" ] || [ "$(/opt/entra-tokend/bin/entra-tokend --version)" = "entra-tokend ${VERSION}" ]; }

# The trust store as an OpenSSL hashed directory: OpenSSL then loads only the CA a handshake
# needs instead of parsing a whole bundle (measured: -0.8 MiB idle RSS, -10 ms cold start).
RUN mkdir /opt/entra-tokend/certs \
 && cp -L /etc/ssl/certs/*.[0-9] /opt/entra-tokend/certs/

FROM ${RUNTIME_IMAGE}
ARG RUNTIME_IMAGE
ARG VERSION=""
ARG REVISION=unknown
LABEL org.opencontainers.image.title="entra-tokend" \
      org.opencontainers.image.description="Exchanges a Kubernetes projected service-account token for Microsoft Entra access tokens and writes them to files." \
      org.opencontainers.image.version="${VERSION:-unknown}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"

COPY --from=build /opt/entra-tokend /opt/entra-tokend

# pip compiled the bytecode at build time; a read-only root filesystem cannot take new .pyc files.
ENV PATH=/opt/entra-tokend/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SSL_CERT_DIR=/opt/entra-tokend/certs

# distroless' "nonroot"; numeric so that runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
EXPOSE 9464
# GET /healthz with the standard library (no shell, no curl here). It asks ENTRA_TOKEND_LISTEN
# (default [::]:9464, reached on loopback): set the listen address there, not with --listen.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["entra-tokend", "healthcheck", "--timeout", "5"]
ENTRYPOINT ["entra-tokend"]
CMD ["run"]
