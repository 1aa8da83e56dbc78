"""Post-write hooks: a command (argv, timeout, output logged) and a signal to a pid file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entra_tokend.emulator import Emulator
from support import (
    STORAGE,
    VAULT,
    DaemonProcess,
    base_env,
    cli,
    emulator_env,
    require_tool,
    run_cli,
    sample_value,
    wait_until,
    write_config,
)
from support.hardening import FAST, pid_alive, processes_with, zombies_of
from support.processes import free_port, healthz

QUICK = "refresh_at = 0.1\njitter = 0\n"  # with 1 s tokens: a refresh every ~0.1 s


def sh_hook(script: str, timeout: float) -> str:
    """A [hook] body running ``script`` with /bin/sh (the hook's program, not a shell of ours)."""
    return f"exec = {json.dumps(['/bin/sh', '-c', script])}\ntimeout = {timeout}\n"


def test_blocked_hook_never_delays_other_tokens_and_its_output_is_logged(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    started, release = tmp_path / "hook-started", tmp_path / "hook-release"
    emulator.access_token_lifetime = 1
    # The hook blocks until the test releases it (bounded, so nothing outlives a failed test).
    script = (
        f"echo $$ > {started}; i=0; "
        f'while [ ! -e {release} ] && [ "$i" -lt 600 ]; do sleep 0.05; i=$((i+1)); done; '
        'echo "hook saw $ENTRA_TOKEND_TOKEN at $ENTRA_TOKEND_TOKEN_FILE"'
    )
    config = write_config(
        tmp_path / "c.toml",
        body=QUICK
        + f'[token.slow]\nscope = "{STORAGE}"\n[token.slow.hook]\n{sh_hook(script, 60)}'
        + f'[token.fast]\nscope = "{VAULT}"\n',
        listen="",
        **FAST,
    )
    d = daemon_factory(
        "run", "--config", str(config), env={**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out)}
    )
    hook_pid = int(wait_until(lambda: started.exists() and started.read_text().strip()))
    before = d.count("token written", token="fast")
    # While slow's hook is stuck, fast keeps being refreshed.
    wait_until(lambda: d.count("token written", token="fast") >= before + 3, timeout=20)
    assert pid_alive(hook_pid)
    assert d.count("hook command ran") == 0
    release.touch()
    ran = d.wait_event("hook command ran", token="slow", timeout=20)
    assert ran["output"] == f"hook saw slow at {out / 'slow'}"
    assert ran["exit_code"] == 0
    assert ran["command"] == "/bin/sh"
    assert d.stop() == 0


def test_hook_timeout_kills_the_hook_and_its_children_and_is_not_fatal(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    pids = tmp_path / "hook-pids"
    emulator.access_token_lifetime = 1
    script = f"sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait"
    config = write_config(
        tmp_path / "c.toml",
        body=QUICK
        + f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\n{sh_hook(script, 1)}'
        + f'[token.b]\nscope = "{VAULT}"\n[token.b.hook]\nexec = ["/nonexistent/hook"]\n',
        listen="127.0.0.1:0",
        **FAST,
    )
    d = daemon_factory(
        "run", "--config", str(config), env={**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out)}
    )
    d.wait_event("hook command timed out", token="a", timeout=20)
    first = [int(p) for p in pids.read_text().split()[:2]]
    assert len(first) == 2
    wait_until(lambda: not any(pid_alive(p) for p in first))  # the hook and its child
    d.wait_event("hook command could not start", token="b", command="/nonexistent/hook")
    wait_until(
        lambda: (
            (sample_value(d.scrape(), "entra_tokend_hook_failures_total", token="a") or 0) >= 1
            and (sample_value(d.scrape(), "entra_tokend_hook_failures_total", token="b") or 0) >= 1
        )
    )
    # Not fatal: the tokens keep being refreshed after failed hooks.
    written = d.count("token written", token="a")
    wait_until(lambda: d.count("token written", token="a") > written, timeout=20)
    assert d.stop() == 0
    # Stopping the daemon kills a hook still running: nothing is left behind.
    wait_until(lambda: not any(pid_alive(int(p)) for p in pids.read_text().split()))


SIGNAL_CHILD = """
import signal, sys, time
from pathlib import Path
pid_file, token_file, log = map(Path, sys.argv[1:4])
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGTERM})
pid_file.write_text(f"{__import__('os').getpid()}\\n")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    info = signal.sigtimedwait({signal.SIGHUP, signal.SIGTERM}, 1.0)
    if info is None:
        continue
    if info.si_signo == signal.SIGTERM:
        break
    with log.open("a") as f:  # what a reader sees at the moment it is told
        f.write(token_file.read_text() + "\\n")
"""


def test_signal_hook_tells_a_reader_after_the_file_is_replaced(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    out = tmp_path / "out"
    pid_file, seen = tmp_path / "reader.pid", tmp_path / "reader.log"
    emulator.access_token_lifetime = 1
    child = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_CHILD, str(pid_file), str(out / "a"), str(seen)],
        env=base_env(),
    )
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"))
        config = write_config(
            tmp_path / "c.toml",
            body=QUICK
            + f'[hook]\npid_file = "{pid_file}"\nsignal = "HUP"\n'
            + f'[token.a]\nscope = "{STORAGE}"\n'
            + f'[token.b]\nscope = "{VAULT}"\n'
            + f'[token.b.hook]\npid_file = "{tmp_path / "no-such.pid"}"\n',
            listen="127.0.0.1:0",
            **FAST,
        )
        d = daemon_factory(
            "run",
            "--config",
            str(config),
            env={**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out)},
        )
        wait_until(lambda: seen.exists() and len(seen.read_text().splitlines()) >= 3, timeout=20)
        sent = d.wait_event("hook signal sent", token="a")
        assert sent["pid"] == child.pid
        assert sent["signal"] == "SIGHUP"
        # At each signal the file already held a complete, freshly issued token.
        assert all(line in emulator.issued_tokens for line in seen.read_text().splitlines())
        # A broken pid file is logged and counted, never fatal.
        d.wait_event("hook pid file unusable", token="b")
        wait_until(
            lambda: (
                (sample_value(d.scrape(), "entra_tokend_hook_failures_total", token="b") or 0) >= 1
            )
        )
        assert d.proc.poll() is None
        assert d.stop() == 0
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=10)
    assert child.returncode == 0


def test_run_once_waits_for_hooks_to_finish(emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = tmp_path / "hook-done"
    # Token b's task ends (quick hook) while token a's slow hook still runs: --once must not
    # take "every token written" for "done" and kill a's hook.
    config = write_config(
        tmp_path / "c.toml",
        body=f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\n'
        + sh_hook(f"sleep 1; echo $ENTRA_TOKEND_TOKEN >> {done}", 30)
        + f'[token.b]\nscope = "{VAULT}"\n[token.b.hook]\n'
        + sh_hook(f"sleep 0.1; echo $ENTRA_TOKEND_TOKEN >> {done}", 30),
        listen="",
        **FAST,
    )
    env = {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out)}
    result = run_cli("run", "--once", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert done.read_text() == "b\na\n"


def test_a_hook_child_that_escapes_with_setsid_is_killed_and_leaks_no_descriptor(
    emulator: Emulator, tmp_path: Path, daemon_factory: Any
) -> None:
    """The example: `setsid sleep 888 & exit 0` used to leak a process and a pipe per run."""
    out = tmp_path / "out"
    emulator.access_token_lifetime = 1
    duration = "888.123"  # a unique command line to find the escapees by
    config = write_config(
        tmp_path / "c.toml",
        body=QUICK
        + f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\n'
        + sh_hook(f"setsid sleep {duration} & exit 0", 1),
        listen="",
        **FAST,
    )
    d = daemon_factory(
        "run", "--config", str(config), env={**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out)}
    )
    fds = Path(f"/proc/{d.proc.pid}/fd")
    wait_until(lambda: d.count("hook command ran", token="a") >= 3, timeout=30)
    baseline = len(list(fds.iterdir()))
    runs = d.count("hook command ran", token="a")
    wait_until(lambda: d.count("hook command ran", token="a") >= runs + 5, timeout=30)
    assert len(list(fds.iterdir())) <= baseline
    assert d.stop() == 0
    # Every escapee was killed (and reaped: no zombie either).
    wait_until(lambda: processes_with(f"sleep {duration}") == [])


def test_as_pid_1_the_daemon_reaps_orphans(emulator: Emulator, tmp_path: Path) -> None:
    """In a container without an init the daemon is PID 1: orphans must not stay zombies."""
    for name in ("unshare", "nsenter"):
        require_tool(name, installer="apt-get install util-linux")
    out = tmp_path / "out"
    marker = tmp_path / "orphans-done"
    # A hook-free daemon in its own PID namespace; a process there leaves an orphan.
    env = base_env(
        {**emulator.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out), "ENTRA_TOKEND_LISTEN": ""}
    )
    daemon = subprocess.Popen(
        # --mount-proc: the namespace's own /proc, as in a container.
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            *cli("run", "--token", f"a={STORAGE}"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until((out / "a").exists, timeout=30)
        inner = wait_until(lambda: _ns_pid1(daemon.pid), timeout=10)
        # Enter the namespace and leave an orphan behind: `sh -c 'true & exit 0'`.
        subprocess.run(
            ["nsenter", "-t", str(inner), "-p", "--", "/bin/sh", "-c",
             f"/bin/sh -c 'true & exit 0'; touch {marker}"],
            check=True, timeout=30,
        )  # fmt: skip
        assert marker.exists()
        wait_until(lambda: zombies_of(inner) == [], timeout=10)
        os.kill(inner, signal.SIGTERM)  # unshare itself ignores SIGTERM while it waits
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(30)


def _ns_pid1(unshare_pid: int) -> int | None:
    """The host pid of the daemon that runs as PID 1 below ``unshare --fork``."""
    from entra_tokend.reaper import children

    kids = children(unshare_pid)
    return next(iter(kids)) if kids else None


def test_a_fifo_as_hook_pid_file_never_blocks_the_daemon(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A FIFO planted as pid_file is refused unopened: the loop, /healthz, other tokens and
    SIGTERM are unaffected."""
    emulator.access_token_lifetime = 2
    fifo = tmp_path / "reader.pid"
    os.mkfifo(fifo)
    port = free_port()
    body = f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\npid_file = "{fifo}"\n'
    config = write_config(
        tmp_path / "c.toml",
        {"b": VAULT},
        body=body,
        backoff_initial=0.05,
        backoff_max=0.2,
        min_refresh_interval=0,
    )
    env = {**emulator_env(emulator, tmp_path / "o"), "ENTRA_TOKEND_LISTEN": f"127.0.0.1:{port}"}
    d = daemon_factory("run", "--config", str(config), env=env)
    event = d.wait_event("hook pid file unusable", timeout=20)
    assert event["detail"] == "not a regular file"
    assert healthz(port) == 200
    written = d.count("token written", token="b")
    wait_until(lambda: d.count("token written", token="b") > written, timeout=20)
    assert d.stop() == 0


def test_the_endpoint_secret_never_reaches_a_hook_or_the_log(
    emulator: Emulator, tmp_path: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A hook inherits no endpoint secret variable, and the log never holds the secret."""
    secret = "TopSecretEndpointValue123"
    port = free_port()
    body = (
        f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\n'
        'exec = ["/bin/sh", "-c", "env; exit 3"]\n'
        f'[endpoint]\nlisten = "127.0.0.1:{port}"\nsecret_env = "MY_SECRET"\n'
        'allow = ["https://storage.azure.com"]\n'
    )
    config = write_config(tmp_path / "c.toml", body=body, listen="")
    env = {**emulator_env(emulator, tmp_path / "o"), "MY_SECRET": secret}
    d = daemon_factory("run", "--config", str(config), env=env)
    failed = d.wait_event("hook command failed", timeout=20)
    assert "ENTRA_TOKEND_TOKEN=a" in failed["output"]  # the hook did print its environment
    assert d.stop() == 0
    assert secret not in d.log_text()
    assert "MY_SECRET" not in failed["output"]


def test_a_hook_printing_more_than_a_pipe_holds_is_not_a_timeout(
    emulator: Emulator, tmp_path: Path
) -> None:
    """300 KB of output (more than a pipe holds) is drained and cut, not counted as a timeout."""
    body = (
        f'[token.a]\nscope = "{STORAGE}"\n[token.a.hook]\n'
        'exec = ["/bin/sh", "-c", "head -c 300000 /dev/zero | tr \\"\\\\\\\\0\\" A"]\n'
        "timeout = 30\n"
    )
    config = write_config(tmp_path / "c.toml", body=body, listen="")
    env = {**emulator_env(emulator, tmp_path / "o"), "ENTRA_TOKEND_LOG_FORMAT": "json"}
    result = run_cli("run", "--once", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    ran = [json.loads(line) for line in result.stderr.splitlines() if "hook command ran" in line]
    assert ran
    assert ran[0]["output_truncated"] is True
