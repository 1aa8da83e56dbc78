#!/usr/bin/env bash
# The container image, built from the Dockerfile and run (CI stage "image", run by .ci/run).
#
# Build: no registry is reachable, so both base images are made here from Debian bookworm with
# mmdebstrap and imported into a buildah store (both cached):
#   debian:12-slim stand-in       the minbase variant (apt, dpkg, a shell: what the build stage needs)
#   distroless python3 stand-in   Debian's python3 (CPython 3.11, as gcr.io/distroless/python3-debian12)
#                                 extracted without maintainer scripts, as distroless does; no shell;
#                                 distroless' /etc/passwd (nonroot = 65532), user 65532, /home/nonroot
# They reach the Dockerfile through its DEBIAN_IMAGE / RUNTIME_IMAGE build arguments; Debian's
# buildah builds it (--isolation chroot, vfs); the build stage fetches from the Debian mirror and
# PyPI (hash-locked). Run: the built image's root filesystem (buildah from + mount) under
# systemd-nspawn, read-only, with the image's own Env/Entrypoint/User/Healthcheck, as the
# shipped deployment-sidecar.yaml runs it: the shipped ConfigMap, the projected token at the
# webhook's path, a memory emptyDir for /tokens (a tmpfs, group = fsGroup 2000, setgid), the
# daemon as 65532:65532 + fsGroup with no capabilities at all; the emulator on the host plays
# Entra and kubelet (the containers share the host's network). Checks:
#   image      the image config (User 65532:65532, ENTRYPOINT, HEALTHCHECK) and no shell in it
#   tokens     the daemon wrote /tokens/arm and /tokens/storage.json (JWTs for the scopes) 0640, fsGroup
#   identity   the daemon process: UID/GID 65532, groups 2000, every capability set empty,
#              no_new_privs, root filesystem mounted read-only
#   readonly   as the daemon's user inside its container, only /tokens takes a new file
#   app        a second container (debian stand-in) as 10001:10001 + fsGroup reads the token and
#              cannot write the volume; without the fsGroup it cannot read it
#   healthcheck the image's HEALTHCHECK command, run inside the daemon's container as 65532,
#              exits 0 (and 1 when pointed at a port nothing listens on)
#   rotation   a projected-token rotation (kubelet's ..data swap, by the emulator) is noticed
#   stop       SIGTERM to the container's PID 1 (the daemon) ends it with status 0
# Prints one PASS/FAIL line per check and "N passed, N failed"; exits non-zero on any failure.
# Needs root and network access to the Debian mirror and PyPI; installs mmdebstrap, buildah
# and systemd-container with apt-get when missing.
#
# Environment: ENTRA_TOKEND_CI_CACHE (default /var/cache/entra-tokend-ci) holds the two trees,
# each keyed by a hash of its recipe, and a buildah store with them imported as images;
# KEEP_WORK=1 keeps the work directory.
set -euo pipefail
shopt -s inherit_errexit

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${ENTRA_TOKEND_CI_CACHE:-/var/cache/entra-tokend-ci}
PY=${PYTHON:-$REPO/.venv/bin/python}
SUITE=bookworm
# Python and what it links, plus what distroless adds beside it (base-files for os-release,
# netbase, tzdata); apt brings the dependencies. Bump RECIPE when the steps below change.
RUNTIME_PACKAGES="python3,base-files,netbase,tzdata"
RECIPE=2
DAEMON_UID=65532
FS_GROUP=2000
APP_UID=10001
DEBIAN_REF=localhost/entra-tokend-ci/debian:12-slim
RUNTIME_REF=localhost/entra-tokend-ci/python3-debian12:nonroot
T0=$(date +%s%N)
passed=0
failed=0

elapsed() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
log() { printf '%s [%7ss] %s\n' "image-ci" "$(elapsed "$T0")" "$*" >&2; }
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $2"; }
die() { FINISHED=1; echo "FAIL setup: $*"; echo "$passed passed, $((failed + 1)) failed"; exit 1; }
# A command failing under `set -e` ends the stage: say so in the stage's own terms.
early_exit() {
  local rc=$?
  [ "$rc" = 0 ] || [ -n "${FINISHED:-}" ] || { echo "FAIL setup: stopped early (exit status $rc)"; echo "$passed passed, $((failed + 1)) failed"; }
}
trap early_exit EXIT

[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap, buildah, systemd-nspawn, mount)"
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v buildah >/dev/null || need+=(buildah)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
declare -A TIMES=()

# ---------------------------------------------------------------- the cached base trees
# $1 role, $2 recipe text (the cache key), rest: the mmdebstrap command line after its options.
cached_tree() {
  local role=$1 recipe=$2 key dir t
  shift 2
  key=$(printf '%s\n' "$SUITE" "$RECIPE" "$recipe" | sha256sum | cut -c1-16)
  dir="$CACHE/image-$role-$key"
  TREE=$dir
  if [ -f "$dir/.complete" ]; then return; fi
  t=$(date +%s%N)
  log "building the $role tree (cache miss: $dir)"
  rm -rf "$dir.tmp"
  mmdebstrap --quiet "$@" "$SUITE" "$dir.tmp" >&2
  if [ "$role" = runtime ]; then distroless_finish "$dir.tmp"; fi
  touch "$dir.tmp/.complete"
  mv "$dir.tmp" "$dir"
  # Trees of earlier recipes are not used again.
  find "$CACHE" -maxdepth 1 -name "image-$role-*" ! -path "$dir" -exec rm -rf {} +
  log "$role tree built in $(elapsed "$t") s"
}
# What distroless adds to the extracted packages: its user database (numeric nonroot 65532),
# the nonroot home, a world-writable /tmp, /var/run -> /run. The shell check keeps the stand-in honest: the
# Dockerfile's runtime stage must not need one.
distroless_finish() {
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$1/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$1/etc/group"
  install -d -o 65532 -g 65532 -m 0700 "$1/home/nonroot"
  chmod 1777 "$1/tmp"
  # base-files' postinst (not run by an extraction) makes /var/run a link to /run.
  rmdir "$1/var/run" && ln -s /run "$1/var/run"
  local found
  found=$(shells_in "$1")
  [ -z "$found" ] || die "the runtime stand-in has a shell ($found): RUNTIME_PACKAGES pulled one in"
}
shells_in() {  # $1: a root directory; prints the shells found in it
  local sh
  for sh in bin/sh bin/bash bin/dash usr/bin/sh usr/bin/bash usr/bin/dash; do
    if [ -e "$1/$sh" ] || [ -L "$1/$sh" ]; then printf '%s ' "$sh"; fi
  done
}
mkdir -p "$CACHE"
exec 9>"$CACHE/image.lock"  # one run at a time builds the trees and uses the store
flock 9
t=$(date +%s%N)
# debian:12-slim is minbase with debuerreotype's "slim" dpkg excludes (kept in the tree's dpkg
# configuration, so the build stage's own installs are slimmed too).
SLIM=()
for dir in doc groff info linda lintian locale man; do SLIM+=("--dpkgopt=path-exclude=/usr/share/$dir/*"); done
SLIM+=("--dpkgopt=path-include=/usr/share/doc/*/copyright")
cached_tree debian "minbase ${SLIM[*]}" --variant=minbase "${SLIM[@]}"
DEBIAN_TREE=$TREE
cached_tree runtime "extract $RUNTIME_PACKAGES" --variant=extract --include="$RUNTIME_PACKAGES"
RUNTIME_TREE=$TREE
TIMES[trees]=$(elapsed "$t")
log "trees: $DEBIAN_TREE $RUNTIME_TREE"

# The version is written once, in the package (pyproject reads it with setuptools' attr).
VERSION=$(PYTHONPATH="$REPO/daemon" "$PY" -c 'import entra_tokend; print(entra_tokend.__version__)')
IMAGE=localhost/entra-tokend-ci/entra-tokend:$VERSION
WORK=$(mktemp -d /var/tmp/entra-tokend-image.XXXXXX)
VOL="$WORK/tokens"
# The base images stay imported in a buildah store beside the trees (keyed by both); what a run
# adds to it (the built image, working containers) is removed at exit, and at start in case an
# earlier run was killed.
STORE="$CACHE/image-buildah-$(printf '%s\n' "$DEBIAN_TREE" "$RUNTIME_TREE" | sha256sum | cut -c1-16)"
find "$CACHE" -maxdepth 1 -name 'image-buildah-*' ! -path "$STORE" -exec rm -rf {} +
B=(buildah --root "$STORE" --runroot "$WORK/runroot" --storage-driver vfs)
tidy_store() {  # each may find nothing to remove
  "${B[@]}" rm --all >/dev/null 2>&1 || true
  "${B[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  "${B[@]}" rmi --prune >/dev/null 2>&1 || true
}
# Common to both containers: read-only root, nothing of the host's /etc, not registered with a
# systemd the host does not run. --no-new-privileges: allowPrivilegeEscalation: false.
NSPAWN=(systemd-nspawn -q --register=no --keep-unit --read-only --timezone=off --resolv-conf=off
        --link-journal=no --no-new-privileges=yes)
NSPAWN_PID=""
EMU_PID=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -KILL "$NSPAWN_PID"; wait "$NSPAWN_PID" 2>/dev/null
  fi
  if [ -n "$EMU_PID" ]; then kill -TERM "$EMU_PID" 2>/dev/null; wait "$EMU_PID" 2>/dev/null; fi
  mountpoint -q "$VOL" && umount "$VOL"
  tidy_store
  if [ "${KEEP_WORK:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  (exit "$rc"); early_exit
}
trap cleanup EXIT

# ---------------------------------------------------------------- base images
# $1 tree, $2 reference, rest: `buildah config` options (the image's configuration).
import_tree() {
  local ctr mnt
  ctr=$("${B[@]}" from --quiet scratch)
  mnt=$("${B[@]}" mount "$ctr")
  tar -C "$1" --exclude=./.complete -c . | tar -C "$mnt" -xp
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" config "${@:3}" "$ctr"
  "${B[@]}" commit --quiet --format docker --rm "$ctr" "$2" >/dev/null
}
t=$(date +%s%N)
tidy_store
if ! "${B[@]}" inspect --type image "$DEBIAN_REF" >/dev/null 2>&1; then
  import_tree "$DEBIAN_TREE" "$DEBIAN_REF" --cmd '["bash"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  log "imported $DEBIAN_REF"
fi
if ! "${B[@]}" inspect --type image "$RUNTIME_REF" >/dev/null 2>&1; then
  # distroless python3-debian12:nonroot's configuration.
  import_tree "$RUNTIME_TREE" "$RUNTIME_REF" --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --entrypoint '["/usr/bin/python3.11"]'
  log "imported $RUNTIME_REF"
fi
TIMES[import]=$(elapsed "$t")
log "base images: $DEBIAN_REF $RUNTIME_REF (store $STORE)"

# ---------------------------------------------------------------- build the Dockerfile
REVISION=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
# pip in the build stage trusts what the host's pip trusts (a TLS-intercepting egress proxy's CA
# included) through a pip.conf bound in for the build only: the runtime stage copies nothing of it.
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
printf '[global]\ncert = /etc/entra-tokend-ci-ca.pem\n' >"$WORK/pip.conf"
t=$(date +%s%N)
log "building $IMAGE"
if ! "${B[@]}" bud --isolation chroot --format docker --pull=never \
    --build-arg DEBIAN_IMAGE="$DEBIAN_REF" --build-arg RUNTIME_IMAGE="$RUNTIME_REF" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
    -v "$HOST_CA:/etc/entra-tokend-ci-ca.pem:ro" -v "$WORK/pip.conf:/etc/pip.conf:ro" \
    -f "$REPO/Dockerfile" -t "$IMAGE" "$REPO" >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log" >&2
  die "buildah bud failed"
fi
TIMES[build]=$(elapsed "$t")
log "built in ${TIMES[build]} s: $("${B[@]}" images --noheading --format '{{.ID}} {{.Size}}' "$IMAGE")"

# ---------------------------------------------------------------- the image's configuration
"${B[@]}" inspect --type image "$IMAGE" >"$WORK/inspect.json"
cfg() { "$PY" "$HERE/image_helpers.py" image-config "$1" <"$WORK/inspect.json"; }
mapfile -t IMAGE_ENV < <(cfg Env)
mapfile -t ENTRYPOINT < <(cfg Entrypoint)
mapfile -t HEALTHCHECK < <(cfg Healthcheck)
USER_SPEC=$(cfg User)
WORKDIR=$(cfg WorkingDir)
t=$(date +%s%N)
DCTR=$("${B[@]}" from --quiet --pull=never "$IMAGE")
DROOT=$("${B[@]}" mount "$DCTR")
ACTR=$("${B[@]}" from --quiet --pull=never "$DEBIAN_REF")
AROOT=$("${B[@]}" mount "$ACTR")
shells=$(shells_in "$DROOT")
# One CPython on both sides: the build stage's python3 made the venv the runtime's python3 runs.
venv_python=$(sed -n 's/^version *= *//p' "$DROOT/opt/entra-tokend/pyvenv.cfg")
runtime_python=$("${NSPAWN[@]}" -D "$DROOT" --pipe /usr/bin/python3 -c 'import platform; print(platform.python_version())' \
  </dev/null 2>"$WORK/python-version.log" || true)
if [ "$USER_SPEC" = "$DAEMON_UID:$DAEMON_UID" ] && [ "${ENTRYPOINT[*]}" = entra-tokend ] \
   && [ "${HEALTHCHECK[0]:-}" = CMD ] && [ -z "$shells" ] && [ -x "$DROOT/opt/entra-tokend/bin/entra-tokend" ] \
   && [ -n "$venv_python" ] && [ "$venv_python" = "$runtime_python" ]; then
  pass "image: User=$USER_SPEC Entrypoint=[${ENTRYPOINT[*]}] Healthcheck=[${HEALTHCHECK[*]}], no shell, venv and runtime CPython $runtime_python"
else
  fail image "User=$USER_SPEC Entrypoint=[${ENTRYPOINT[*]}] Healthcheck=[${HEALTHCHECK[*]}] shells=[$shells] venv CPython $venv_python, runtime $runtime_python"
fi

# ---------------------------------------------------------------- the emulator on the host
free_port() { "$PY" -c 'import socket; s=socket.socket(socket.AF_INET6); s.bind(("::",0)); print(s.getsockname()[1])'; }
EMU_STATE="$WORK/emulator"
PYTHONPATH="$REPO/daemon" "$PY" -m entra_tokend emulator --listen "127.0.0.1:$(free_port)" \
  --state-dir "$EMU_STATE" --token-ttl 3600 >"$WORK/emulator.log" 2>&1 &
EMU_PID=$!
for _ in $(seq 1 300); do [ -s "$EMU_STATE/env" ] && break; sleep 0.1; done
[ -s "$EMU_STATE/env" ] || { cat "$WORK/emulator.log" >&2; die "emulator did not start"; }
# shellcheck disable=SC1091
emu_env() { (set -a; . "$EMU_STATE/env"; printenv "$1"); }
TOKEN_FILE=$(emu_env AZURE_FEDERATED_TOKEN_FILE)
log "emulator at $(emu_env AZURE_AUTHORITY_HOST)"

# ---------------------------------------------------------------- the pod's volumes
# emptyDir {medium: Memory} with fsGroup 2000, as kubelet leaves it: a tmpfs, group 2000, setgid
# (files created in it get group 2000). Mode 2770: only the group grants the app access.
mkdir -p "$VOL"
# Mount points go into each container's own layer (the buildah working container's rootfs, not
# the image), as a container runtime creates them: nspawn cannot once the root is read-only.
mkdir -p "$DROOT/tokens" "$DROOT/etc/entra-tokend" "$AROOT/tokens"
mount -t tmpfs -o "size=1m,mode=2770,uid=0,gid=$FS_GROUP" entra-tokend-ci-tokens "$VOL"
LISTEN="[::]:$(free_port)"
mkdir -p "$WORK/config"
"$PY" "$HERE/image_helpers.py" configmap "$REPO/config/kubernetes/configmap.yaml" entra-tokend.toml "$LISTEN" \
  >"$WORK/config/entra-tokend.toml"
CI_DIR=/run/entra-tokend-ci
env_args=()
for kv in "${IMAGE_ENV[@]}"; do env_args+=("--setenv=$kv"); done
env_args+=(
  "--setenv=AZURE_TENANT_ID=$(emu_env AZURE_TENANT_ID)" "--setenv=AZURE_CLIENT_ID=$(emu_env AZURE_CLIENT_ID)"
  "--setenv=AZURE_AUTHORITY_HOST=$(emu_env AZURE_AUTHORITY_HOST)"
  "--setenv=AZURE_FEDERATED_TOKEN_FILE=/var/run/secrets/azure/tokens/$(basename "$TOKEN_FILE")"
  "--setenv=SSL_CERT_FILE=$CI_DIR/emulator-ca.pem" "--setenv=ENTRA_TOKEND_LISTEN=$LISTEN"
)
DROP=(/usr/bin/python3 -I "$CI_DIR/drop_privileges.py" "$DAEMON_UID" "$DAEMON_UID" "$FS_GROUP" --)
TIMES[prepare]=$(elapsed "$t")

# ---------------------------------------------------------------- run the daemon container
t=$(date +%s%N)
"${NSPAWN[@]}" -D "$DROOT" --kill-signal=SIGTERM --chdir="${WORKDIR:-/}" "${env_args[@]}" \
  --bind="$VOL:/tokens" --bind-ro="$WORK/config:/etc/entra-tokend" \
  --bind-ro="$(dirname "$TOKEN_FILE"):/var/run/secrets/azure/tokens" \
  --bind-ro="$(emu_env SSL_CERT_FILE):$CI_DIR/emulator-ca.pem" \
  --bind-ro="$HERE/drop_privileges.py:$CI_DIR/drop_privileges.py" --bind-ro="$DROOT/tmp:/tmp" \
  "${DROP[@]}" "${ENTRYPOINT[@]}" run --config /etc/entra-tokend/entra-tokend.toml \
  >"$WORK/daemon.log" 2>&1 </dev/null &
NSPAWN_PID=$!
LEADER=""
for _ in $(seq 1 300); do
  for child in $(pgrep -P "$NSPAWN_PID" || true); do
    if awk '/^NSpid:/ { exit !($NF == 1) }' "/proc/$child/status" 2>/dev/null; then LEADER=$child; fi
  done
  [ -n "$LEADER" ] && break
  sleep 0.1
done
[ -n "$LEADER" ] || { cat "$WORK/daemon.log" >&2; die "the container did not start"; }
for _ in $(seq 1 900); do
  [ -s "$VOL/arm" ] && [ -s "$VOL/storage.json" ] && break
  kill -0 "$NSPAWN_PID" 2>/dev/null || break
  sleep 0.1
done
TIMES[first_tokens]=$(elapsed "$t")
log "container leader $LEADER; tokens after ${TIMES[first_tokens]} s"

# ---------------------------------------------------------------- checks
arm=$(cat "$VOL/arm" 2>/dev/null || true)
claim() { "$PY" "$HERE/image_helpers.py" jwt-claim "$1"; }
if [[ "$arm" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] \
   && [ "$(claim aud <<<"$arm")" = https://management.azure.com ] \
   && [ "$(stat -c '%u:%g %a' "$VOL/arm")" = "$DAEMON_UID:$FS_GROUP 640" ] \
   && [ "$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"].count("."))' "$VOL/storage.json")" = 2 ]; then
  pass "tokens: /tokens/arm (aud $(claim aud <<<"$arm")) and /tokens/storage.json, owner $(stat -c '%u:%g mode %a' "$VOL/arm")"
else
  fail tokens "$(find "$VOL" -mindepth 1 -printf '%f %U:%G %m; ')"
  tail -n 20 "$WORK/daemon.log" >&2
fi

status=$(cat "/proc/$LEADER/status" 2>/dev/null || true)
field() { awk -v f="$1:" '$1 == f { $1 = ""; sub(/^ /, ""); print }' <<<"$status"; }
root_opts=$(awk '$5 == "/" { print $6 }' "/proc/$LEADER/mountinfo" 2>/dev/null | tail -n 1)
cmdline=$(tr '\0' ' ' <"/proc/$LEADER/cmdline" 2>/dev/null || true)
ids="$DAEMON_UID $DAEMON_UID $DAEMON_UID $DAEMON_UID"
caps_zero=yes
for c in CapInh CapPrm CapEff CapBnd CapAmb; do [ "$(field $c)" = 0000000000000000 ] || caps_zero=no; done
if [ "$(field Uid)" = "$ids" ] && [ "$(field Gid)" = "$ids" ] && [ "$(field Groups)" = "$FS_GROUP" ] \
   && [ "$caps_zero" = yes ] && [ "$(field NoNewPrivs)" = 1 ] && [[ "$root_opts" == ro,* ]] \
   && [[ "$cmdline" == *"/opt/entra-tokend/bin/entra-tokend run"* ]]; then
  pass "identity: PID 1 of the container ($cmdline) uid/gid $DAEMON_UID, groups $FS_GROUP, capability sets all 0, no_new_privs, / mounted $root_opts"
else
  fail identity "cmdline=[$cmdline] Uid=[$(field Uid)] Gid=[$(field Gid)] Groups=[$(field Groups)] CapEff=$(field CapEff) CapBnd=$(field CapBnd) CapInh=$(field CapInh) NoNewPrivs=$(field NoNewPrivs) root=$root_opts"
fi

# readonly: where the daemon's user can create a file inside its container (nspawn's own /tmp
# tmpfs is replaced by the image's read-only /tmp, as readOnlyRootFilesystem leaves it).
probe='import os
for d in ("/", "/tmp", "/var/tmp", "/run", "/home/nonroot", "/opt/entra-tokend", "/etc/entra-tokend", "/tokens"):
    try:
        open(os.path.join(d, ".probe"), "x").close()
    except OSError as e:
        continue
    os.unlink(os.path.join(d, ".probe"))
    print(d)'
writable=$(nsenter -t "$LEADER" -m -u -i -n -p -r -w -- "${DROP[@]}" /usr/bin/python3 -I -c "$probe" 2>&1 | tr '\n' ' ' || true)
if [ "$writable" = "/tokens " ]; then pass "readonly: as $DAEMON_UID only /tokens is writable (/, /tmp, /var/tmp, /run, the home, the venv, the config are not)"
else fail readonly "writable as $DAEMON_UID: [$writable]"; fi

# The app container: the debian stand-in, the volume read-only, as the manifest's app container.
# It reports a digest of what it read, never the token.
app() {  # $1: supplementary groups for setpriv (--groups=... or --clear-groups), $2: a sh script
  "${NSPAWN[@]}" -D "$AROOT" --bind-ro="$VOL:/tokens" --pipe \
    setpriv --reuid="$APP_UID" --regid="$APP_UID" "$1" --inh-caps=-all --bounding-set=-all \
    /bin/sh -c "$2" </dev/null 2>>"$WORK/app.log"
}
app_out=$(app --groups="$FS_GROUP" 'id -u; id -G; grep CapEff /proc/self/status; sha256sum </tokens/arm
  if touch /tokens/written-by-app; then echo wrote; else echo write-refused; fi' || true)
mapfile -t app_lines <<<"$app_out"
denied_out=$(app --clear-groups 'if cat /tokens/arm >/dev/null; then echo read; else echo read-refused; fi' || true)
arm_digest=$(sha256sum <"$VOL/arm")
if [ "${app_lines[0]:-}" = "$APP_UID" ] && [ "${app_lines[1]:-}" = "$APP_UID $FS_GROUP" ] \
   && [ "${app_lines[2]:-}" = $'CapEff:\t0000000000000000' ] && [ "${app_lines[3]:-}" = "$arm_digest" ] \
   && [ "${app_lines[4]:-}" = write-refused ] && grep -q 'written-by-app.*Read-only file system' "$WORK/app.log" \
   && [ "$denied_out" = read-refused ] && grep -q '/tokens/arm: Permission denied' "$WORK/app.log"; then
  pass "app: uid $APP_UID groups ${app_lines[1]} read /tokens/arm (same sha256), write refused (read-only mount); without group $FS_GROUP: read refused (EACCES)"
else
  fail app "$(tr '\n' ';' <<<"$app_out") | without the group: $(tr '\n' ';' <<<"$denied_out")"
fi

# The HEALTHCHECK, as Docker runs it: exec'd inside the daemon's container, as the image's user,
# with the image's environment (ENTRA_TOKEND_LISTEN as the deployment would set it).
healthcheck() {  # $1: ENTRA_TOKEND_LISTEN
  env -i "${IMAGE_ENV[@]}" "ENTRA_TOKEND_LISTEN=$1" "$(command -v nsenter)" -t "$LEADER" -m -u -i -n -p -r -w -- \
    "${DROP[@]}" "${HEALTHCHECK[@]:1}" 2>&1
}
hc_rc=0; hc_out=$(healthcheck "$LISTEN") || hc_rc=$?
bad_rc=0; bad_out=$(healthcheck "127.0.0.1:$(free_port)") || bad_rc=$?
if [ "$hc_rc" = 0 ] && [ "$bad_rc" = 1 ]; then
  pass "healthcheck: [${HEALTHCHECK[*]:1}] as $DAEMON_UID exits 0 (1 against a closed port: ${bad_out//$'\n'/ })"
else
  fail healthcheck "exit $hc_rc (${hc_out//$'\n'/ }); against a closed port exit $bad_rc"
fi

# rotation: the emulator, as kubelet, swaps ..data in the projected volume bound into the
# container; the daemon notices through the read-only bind mount.
"$PY" - "$(emu_env AZURE_AUTHORITY_HOST)" "$(emu_env SSL_CERT_FILE)" <<'EOF_PY'
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
req = urllib.request.Request(sys.argv[1] + "/_admin/rotate", data=b'{"ttl": 3700}', method="POST")
urllib.request.urlopen(req, context=ctx, timeout=10).read()
EOF_PY
rotated=no
for _ in $(seq 1 300); do
  if grep -q '"event": "projected token rotated"' "$WORK/daemon.log"; then rotated=yes; break; fi
  sleep 0.1
done
if [ "$rotated" = yes ]; then pass "rotation: a kubelet-style ..data swap in the bound token volume was noticed"
else fail rotation "no \"projected token rotated\" event within 30 s"; fi

# stop: SIGTERM to nspawn is passed to the container's PID 1, the daemon, which exits 0.
kill -TERM "$NSPAWN_PID"
rc=0
for _ in $(seq 1 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$NSPAWN_PID" 2>/dev/null; then
  fail stop "the container was still running 30 s after SIGTERM"
else
  wait "$NSPAWN_PID" || rc=$?
  NSPAWN_PID=""
  if [ "$rc" = 0 ]; then pass "stop: SIGTERM ended the daemon with status 0"
  else fail stop "exit status $rc"; tail -n 5 "$WORK/daemon.log" >&2; fi
fi
TIMES[run]=$(elapsed "$t")

summary=""
for k in trees import build prepare first_tokens run; do summary+="$k ${TIMES[$k]:-?} s, "; done
log "timings: ${summary}total $(elapsed "$T0") s"
FINISHED=1
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] || exit 1
