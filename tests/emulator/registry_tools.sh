#!/usr/bin/env bash
# Installs the real container-registry tools the emulator's ACR tests drive, if missing: the CNCF
# distribution registry (Debian `docker-registry`, /usr/bin/docker-registry) and `skopeo`.
# Idempotent and quick when both are present; needs root (or sudo) only when one is missing.
# The package's service is not started (the tests run their own registries).
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! command -v docker-registry >/dev/null 2>&1 || ! command -v skopeo >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends docker-registry skopeo >/dev/null
fi

docker-registry --version 2>&1 | head -n 1
skopeo --version | head -n 1
