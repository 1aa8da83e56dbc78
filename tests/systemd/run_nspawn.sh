#!/usr/bin/env bash
# The shipped systemd unit under a real systemd (CI stage "systemd", run by .ci/run).
#
# Builds (once, cached) a minimal Debian bookworm tree with mmdebstrap, installs entra-tokend
# into a copy of it the way the README tells a user (a venv, pip install of the built wheel, the
# unit, sysusers and env files), points it at the project's emulator on the host loopback (the
# container shares the host network), boots it with `systemd-nspawn -b` and, from the host,
# enters the container's namespaces with nsenter to drive systemctl (the host has no systemd,
# so machinectl cannot reach the container). Checks:
#   notify     `systemctl start` returns only once the tokens are on disk (Type=notify, READY=1)
#   status     STATUS= text shows in `systemctl show`
#   watchdog   a SIGSTOPped daemon is killed by the watchdog and restarted
#   reload     `systemctl reload` (ExecReload) applies a changed config without a restart
#   exit2      a configuration error (exit 2) is not restarted
#   sandbox    a hook running in the unit's sandbox can write /run/entra-tokend and nothing else
# Prints one PASS/FAIL line per check and ends with "N passed, N failed"; exits non-zero on any
# failure. Needs root, mmdebstrap and systemd-container (installed with apt-get when missing),
# and network access to the Debian mirror (first run) and PyPI.
#
# Environment: ENTRA_TOKEND_CI_CACHE (default /var/cache/entra-tokend-ci) holds the tree, keyed
# by a hash of the package list, and pip's download cache; KEEP_WORK=1 keeps the work directory.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${ENTRA_TOKEND_CI_CACHE:-/var/cache/entra-tokend-ci}
PY=${PYTHON:-$REPO/.venv/bin/python}
SUITE="bookworm"
# procps: /bin/kill, which the unit's ExecReload= runs (Debian "important", minbase lacks it).
PACKAGES="systemd,systemd-sysv,dbus,procps,python3,python3-venv,ca-certificates"
T0=$(date +%s.%N)
passed=0
failed=0

log() { printf '%s [%6.1fs] %s\n' "systemd-ci" "$(echo "$(date +%s.%N) - $T0" | bc)" "$*" >&2; }
pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $2"; }

if [ "$(id -u)" != 0 ]; then
  echo "FAIL setup: needs root (mmdebstrap, systemd-nspawn, nsenter)"; echo "0 passed, 1 failed"; exit 1
fi
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v bc >/dev/null || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---------------------------------------------------------------- the cached base tree
key=$(printf '%s\n' "$SUITE" minbase "$PACKAGES" | sha256sum | cut -c1-16)
BASE="$CACHE/tree-$key"
mkdir -p "$CACHE/pip"
if [ ! -x "$BASE/usr/bin/python3" ]; then
  log "building the $SUITE tree (cache miss: $BASE)"
  rm -rf "$BASE.tmp"
  mmdebstrap --quiet --variant=minbase --include="$PACKAGES" "$SUITE" "$BASE.tmp" >&2
  mv "$BASE.tmp" "$BASE"
else
  log "cached tree $BASE"
fi

WORK=$(mktemp -d /var/tmp/entra-tokend-nspawn.XXXXXX)
NSPAWN_PID=""
EMU_PID=""
cleanup() {
  set +e
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID"  # nspawn asks the container's systemd to power off
    for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null
  fi
  if [ -n "$EMU_PID" ]; then kill -TERM "$EMU_PID" 2>/dev/null; wait "$EMU_PID" 2>/dev/null; fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
ROOT="$WORK/root"
cp -a --reflink=auto "$BASE" "$ROOT"
log "tree copied"

# ---------------------------------------------------------------- the emulator on the host
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EMU_STATE="$WORK/emulator"
PYTHONPATH="$REPO/daemon" "$PY" -m entra_tokend emulator --listen "127.0.0.1:$(free_port)" \
  --state-dir "$EMU_STATE" --token-ttl 3600 >"$WORK/emulator.log" 2>&1 &
EMU_PID=$!
for _ in $(seq 1 150); do [ -s "$EMU_STATE/env" ] && break; sleep 0.1; done
[ -s "$EMU_STATE/env" ] || { cat "$WORK/emulator.log" >&2; echo "FAIL setup: emulator did not start"; exit 1; }
# shellcheck disable=SC1091
emu_env() { (set -a; . "$EMU_STATE/env"; printenv "$1"); }
AUTHORITY=$(emu_env AZURE_AUTHORITY_HOST)
log "emulator at $AUTHORITY"

# ---------------------------------------------------------------- install as the README says
# The wheel is what a user would install; its dependencies come from PyPI (pip's cache is shared).
"$PY" -m build --wheel --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log" >&2; echo "FAIL setup: python -m build"; exit 1; }
WHEEL=$(basename "$WORK"/dist/*.whl)
mkdir -p "$ROOT/root/dist" && cp "$WORK/dist/$WHEEL" "$ROOT/root/dist/"  # nspawn mounts a tmpfs on /tmp
# The federated token file and the emulator's CA, where a VM would keep them.
mkdir -p "$ROOT/var/lib/entra-tokend"
# pip inside trusts what the host's pip trusts (a TLS-intercepting egress proxy's CA included).
HOST_CA=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
proxy_env=()
for var in HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy; do
  if [ -n "${!var:-}" ]; then proxy_env+=("--setenv=$var=${!var}"); fi
done
systemd-nspawn -q -D "$ROOT" --register=no --keep-unit --bind="$CACHE/pip:/root/.cache/pip" \
  --bind-ro="$HOST_CA:/run/host-ca.pem" --setenv=PIP_CERT=/run/host-ca.pem "${proxy_env[@]}" --pipe \
  /bin/sh -euc "
    python3 -m venv /opt/entra-tokend
    /opt/entra-tokend/bin/pip install -q --disable-pip-version-check /root/dist/$WHEEL
    /opt/entra-tokend/bin/entra-tokend --version
  " >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; echo "FAIL setup: pip install in the tree"; exit 1; }
log "installed: $(grep "^entra-tokend " "$WORK/install.log")"
install -m 0644 "$REPO/systemd/entra-tokend.service" "$ROOT/etc/systemd/system/"
install -D -m 0644 "$REPO/systemd/entra-tokend.sysusers.conf" "$ROOT/etc/sysusers.d/entra-tokend.conf"
install -d -m 0755 "$ROOT/etc/entra-tokend"
install -m 0644 "$(emu_env SSL_CERT_FILE)" "$ROOT/etc/entra-tokend/emulator-ca.pem"
cat >"$ROOT/etc/entra-tokend/env" <<EOF
AZURE_TENANT_ID=$(emu_env AZURE_TENANT_ID)
AZURE_CLIENT_ID=$(emu_env AZURE_CLIENT_ID)
AZURE_FEDERATED_TOKEN_FILE=/var/lib/entra-tokend/federated-token
AZURE_AUTHORITY_HOST=$AUTHORITY
SSL_CERT_FILE=/etc/entra-tokend/emulator-ca.pem
EOF
chmod 0600 "$ROOT/etc/entra-tokend/env"
# The sandbox probe: a hook (it runs inside the unit's sandbox, as the unit's user) that tries
# to write where the daemon must not, and reports each outcome next to the tokens.
cat >"$ROOT/usr/local/bin/sandbox-probe" <<'EOF'
#!/bin/sh
out=/run/entra-tokend/sandbox-report.tmp
: >"$out" || exit 1
for target in /run/entra-tokend/probe /etc/entra-tokend/probe /var/lib/entra-tokend/probe \
              /opt/entra-tokend/probe /usr/local/probe /var/cache/probe /root/probe; do
  if ( : >"$target" ) 2>/dev/null; then echo "writable $target" >>"$out"; rm -f "$target"
  else echo "denied $target" >>"$out"; fi
done
# PrivateTmp=yes: /var/tmp is writable but the unit's own; the script checks it stays invisible.
: >/var/tmp/sandbox-private-marker || echo "denied /var/tmp (PrivateTmp)" >>"$out"
mv "$out" /run/entra-tokend/sandbox-report
EOF
chmod 0755 "$ROOT/usr/local/bin/sandbox-probe"
LISTEN="127.0.0.1:$(free_port)"
write_config() {  # $@: token names, each a scope of the emulator's tenant
  {
    echo "listen = \"$LISTEN\""
    echo 'log_format = "json"'
    for name in "$@"; do
      printf '[token.%s]\nscope = "https://%s.example.com/.default"\n' "$name" "$name"
    done
    printf '[token.%s.hook]\nexec = ["/usr/local/bin/sandbox-probe"]\n' "$1"
  } >"$ROOT/etc/entra-tokend/entra-tokend.toml"
}
write_config arm
# Watchdog and restart delay shortened for the test only (a drop-in, as an admin would);
# everything else is the shipped unit.
mkdir -p "$ROOT/etc/systemd/system/entra-tokend.service.d"
cat >"$ROOT/etc/systemd/system/entra-tokend.service.d/ci.conf" <<'EOF'
[Service]
WatchdogSec=4s
RestartSec=1s
EOF

# ---------------------------------------------------------------- boot
log "booting"
systemd-nspawn -q -D "$ROOT" --register=no --keep-unit -b \
  --bind-ro="$(emu_env AZURE_FEDERATED_TOKEN_FILE):/var/lib/entra-tokend/federated-token" \
  >"$WORK/console.log" 2>&1 </dev/null &
NSPAWN_PID=$!
LEADER=""
for _ in $(seq 1 300); do
  for child in $(pgrep -P "$NSPAWN_PID" || true); do
    # The container's init is the process whose innermost pid namespace number is 1.
    if awk '/^NSpid:/ { exit !($NF == 1) }' "/proc/$child/status" 2>/dev/null; then LEADER=$child; fi
  done
  [ -n "$LEADER" ] && break
  sleep 0.1
done
[ -n "$LEADER" ] || { cat "$WORK/console.log" >&2; echo "FAIL setup: container did not start"; exit 1; }
inside() { nsenter -t "$LEADER" -a -- "$@"; }
for _ in $(seq 1 600); do inside test -S /run/systemd/private 2>/dev/null && break; sleep 0.1; done
state=$(inside timeout 120 systemctl is-system-running --wait 2>&1 || true)
log "container booted (leader $LEADER, system $state)"
prop() { inside systemctl show -P "$1" entra-tokend.service || true; }
wait_for() {  # $1 seconds, rest: a command that must succeed
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@"; do [ "$(date +%s)" -lt "$deadline" ] || return 1; sleep 0.2; done
}

# ---------------------------------------------------------------- checks
# notify: start blocks until READY=1, which the daemon sends once every token is on disk.
if inside systemctl start entra-tokend.service && inside test -s /run/entra-tokend/arm; then
  pass "notify: systemctl start returned with /run/entra-tokend/arm on disk"
else
  fail notify "start failed or returned before the token was written"
  inside systemctl status --no-pager entra-tokend.service >&2 || true
fi
# The token is the emulator's access token (a JWT), not an error page or an empty write.
if [[ "$(inside cat /run/entra-tokend/arm 2>/dev/null)" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]]; then
  pass "token: /run/entra-tokend/arm holds a JWT from the emulator"
else
  fail token "/run/entra-tokend/arm is not a JWT"
fi

status=$(prop StatusText)
if [[ "$status" == *"tokens on disk"* ]]; then pass "status: StatusText=\"$status\""
else fail status "StatusText=\"$status\""; fi

# sandbox: the hook ran after the first write, inside the unit's sandbox.
if wait_for 30 inside test -s /run/entra-tokend/sandbox-report; then
  report=$(inside cat /run/entra-tokend/sandbox-report)
  if [ "$(grep -c '^writable' <<<"$report")" = 1 ] && grep -q '^writable /run/entra-tokend/probe$' <<<"$report"; then
    if inside test -e /var/tmp/sandbox-private-marker; then
      fail sandbox "the unit's /var/tmp is the system's (PrivateTmp= does not apply)"
    else
      pass "sandbox: writable only /run/entra-tokend ($(grep -c '^denied' <<<"$report") other paths denied, /var/tmp private)"
    fi
  else
    fail sandbox "$(tr '\n' ';' <<<"$report")"
  fi
else
  fail sandbox "the probe hook left no report"
fi

# watchdog: SIGSTOP the daemon; systemd must kill it (SIGABRT) and start a new one.
pid=$(prop MainPID)
restarts=$(prop NRestarts)
inside /bin/sh -c "kill -STOP $pid"
restarted() { local now; now=$(prop MainPID); [ "$now" != 0 ] && [ "$now" != "$pid" ] && [ "$(prop ActiveState)" = active ]; }
if wait_for 60 restarted && [ "$(prop NRestarts)" -gt "$restarts" ] \
   && inside journalctl -u entra-tokend.service --no-pager | grep -q "Watchdog timeout"; then
  pass "watchdog: stopped pid $pid killed on watchdog timeout, restarted as $(prop MainPID)"
else
  fail watchdog "MainPID=$(prop MainPID) NRestarts=$(prop NRestarts) (was $pid, $restarts)"
fi

# reload: a second token in the config appears without a restart.
pid=$(prop MainPID)
write_config arm graph
if inside systemctl reload entra-tokend.service && wait_for 60 inside test -s /run/entra-tokend/graph \
   && [ "$(prop MainPID)" = "$pid" ]; then
  pass "reload: systemctl reload added /run/entra-tokend/graph, same pid $pid"
else
  fail reload "MainPID=$(prop MainPID) (was $pid); graph token: $(inside ls /run/entra-tokend 2>&1 | tr '\n' ' ')"
fi

# exit2: a configuration error is final. With Restart=on-failure systemd would show
# activating/auto-restart; RestartPreventExitStatus=2 makes it go straight to failed.
echo 'no_such_key = 1' >>"$ROOT/etc/entra-tokend/entra-tokend.toml"
inside systemctl restart entra-tokend.service 2>/dev/null || true
failed_state() { [ "$(prop ActiveState)" = failed ]; }
if wait_for 30 failed_state && [ "$(prop ExecMainStatus)" = 2 ]; then
  pass "exit2: exit status 2 left the unit failed (Result=$(prop Result)), no restart"
else
  fail exit2 "ActiveState=$(prop ActiveState) SubState=$(prop SubState) ExecMainStatus=$(prop ExecMainStatus)"
fi

inside systemd-analyze security --no-pager entra-tokend.service 2>/dev/null | tail -n 1 >&2 || true
log "done"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
