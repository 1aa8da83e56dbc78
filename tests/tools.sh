#!/usr/bin/env bash
# Installs the non-Python tools the tests call, if missing: promtool and prometheus (from Debian's
# prometheus package; only those two binaries are unpacked), systemd-analyze (Debian's
# systemd), and the real clients and servers of the README recipes (tests/recipes/). Idempotent and quick when all are present. Needs root (or sudo) only when something
# is missing.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
updated=0
apt_update() {
  if [ "$updated" = 0 ]; then $SUDO apt-get update -qq; updated=1; fi
}

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  apt_update
  work=$(mktemp -d)
  (cd "$work" && apt-get download -qq prometheus && dpkg-deb -x prometheus_*.deb root)
  $SUDO install -m 0755 "$work/root/usr/bin/promtool" "$work/root/usr/bin/prometheus" /usr/local/bin/
  rm -rf "$work"
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
  apt_update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

if ! command -v curl >/dev/null 2>&1; then
  apt_update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null
fi

# docker-registry and skopeo: the real registry tools of the ACR tests.
"$(dirname "$0")/emulator/registry_tools.sh"

# The README recipes' real clients (tests/recipes/): PostgreSQL 15 server + psql, Redis 7 server
# + redis-cli, nginx, buildah and podman (pulling only: containers cannot run here), setpriv,
# kubectl.
# Each package is installed only when its command is missing. The packages' services are not
# started (no systemd here; the tests run their own servers).
recipe_packages=()
need() { command -v "$1" >/dev/null 2>&1 || recipe_packages+=("$2"); }
need psql postgresql-client
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || recipe_packages+=(postgresql)
need redis-server redis-server
need redis-cli redis-tools
need nginx nginx-light
need buildah buildah
need podman podman
need setpriv util-linux
need kubectl kubernetes-client
if [ "${#recipe_packages[@]}" -gt 0 ]; then
  apt_update
  $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${recipe_packages[@]}" >/dev/null
fi

promtool --version 2>&1 | head -n 1
prometheus --version 2>&1 | head -n 1
systemd-analyze --version | head -n 1

# @azure/identity and @azure/msal-node for the JavaScript managed-identity endpoint tests
# (tests/sdk/mi_probe.mjs, msal_probe.mjs), into a git-ignored cache next to the probes; skipped
# when node/npm are missing.
SDK_NPM="$(dirname "$0")/sdk/.npm"
if command -v npm >/dev/null 2>&1 && { [ ! -d "$SDK_NPM/node_modules/@azure/identity" ] ||
  ! grep -q msal-node "$SDK_NPM/package.json" 2>/dev/null; }; then
  npm install --silent --no-audit --no-fund --prefix "$SDK_NPM" "@azure/identity@^4" \
    "@azure/msal-node@^5" >/dev/null
fi

# confluent-kafka (librdkafka's azure_imds) is in the test extra. azure-cli pins its own
# dependencies, so it gets a venv of its own (tests/endpoint/test_endpoint_az.py; CI stage "az").
AZ_VENV="${ENTRA_TOKEND_AZ_VENV:-/work/venvs/az}"
if [ "${ENTRA_TOKEND_INSTALL_AZ:-0}" = 1 ] && [ ! -x "$AZ_VENV/bin/az" ]; then
  python3 -m venv "$AZ_VENV" && "$AZ_VENV/bin/pip" install -q azure-cli
fi
