"""``entra-tokend exec`` (issue 25): a program run with fresh tokens in its environment, its
exit status passed through, signals forwarded, restarted or signalled on a refresh.

Real subprocesses against the emulator; the programs are small Python scripts that record what
they saw (their environment, the signals they got) in files the test waits for."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from entra_tokend.emulator import Emulator, Fault
from testlib import (
    STORAGE,
    VAULT,
    DaemonProcess,
    base_env,
    cli,
    emulator_env,
    jwt_claims,
    run_cli,
    sample_value,
    wait_until,
    write_config,
)

Factory = Callable[..., DaemonProcess]

# Records its token variables, then each signal it gets (one line each) until TERM or INT.
RECORDER = """\
import json, os, signal, sys, time
record = sys.argv[1]
def log(line):
    with open(record, "a") as f:
        f.write(line + "\\n")
def got(sig, _frame):
    log(signal.Signals(sig).name)
    if sig in (signal.SIGTERM, signal.SIGINT):
        sys.exit(int(os.environ.get("EXIT_ON_STOP", "0")))
for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
            signal.SIGUSR2):
    signal.signal(sig, got)
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
env = {k: v for k, v in os.environ.items() if "ACCESS_TOKEN" in k}
log("env " + json.dumps(env))
while True:
    time.sleep(60)
"""


def _recorder(tmp_path: Path) -> list[str]:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    return [sys.executable, str(script), str(tmp_path / "record")]


def _lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "record"
    text = path.read_text() if path.exists() else ""
    return [line for line in text.split("\n")[:-1] if line]


def _envs(tmp_path: Path) -> list[dict[str, str]]:
    return [json.loads(line[4:]) for line in _lines(tmp_path) if line.startswith("env ")]


def _hold_refreshes(emulator: Emulator) -> None:
    """The first token request is answered, every later one fails (503, retried quickly) until
    ``clear_faults``: the test decides when the first refresh happens — after the program is
    ready (its handlers installed), never while it is still starting."""
    emulator.inject(Fault("delay", delay=0.0), Fault("status", status=503, count=100000))


def _config(tmp_path: Path, tokens: dict[str, str] | None = None, body: str = "") -> str:
    path = write_config(
        tmp_path / "c.toml",
        tokens if tokens is not None else {"a": STORAGE},
        body=body,
        backoff_initial=0.05,
        backoff_max=0.2,
        min_refresh_interval=0,
    )
    return str(path)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("sys.exit(0)", 0),
        ("sys.exit(3)", 3),
        ("os.kill(os.getpid(), signal.SIGKILL)", 137),
    ],
)
def test_the_programs_exit_status_is_execs(
    emulator: Emulator, tmp_path: Path, code: str, status: int
) -> None:
    out = tmp_path / "out"
    program = (
        "import os, signal, sys\n"
        "assert os.environ['A_ACCESS_TOKEN'] == open(sys.argv[1]).read(), 'token differs'\n"
        "assert int(os.environ['A_ACCESS_TOKEN_EXPIRES_ON']) > 0\n" + code
    )
    result = run_cli(
        "exec",
        "--config",
        _config(tmp_path),
        "--",
        sys.executable,
        "-c",
        program,
        str(out / "a"),
        env=emulator_env(emulator, out),
    )
    assert result.returncode == status, result.stderr


def test_env_format_tokens_set_their_variables(emulator: Emulator, tmp_path: Path) -> None:
    out = tmp_path / "out"
    body = f'[token.pg]\nscope = "{VAULT}"\nformat = "env"\nenv_name = "PGPASSWORD"\n'
    result = run_cli(
        "exec",
        "--config",
        _config(tmp_path, {"storage-1": STORAGE}, body),
        "--",
        sys.executable,
        "-c",
        "import json, os; print(json.dumps(dict(os.environ)))",
        env=emulator_env(emulator, out),
    )
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout)
    assert (out / "pg").read_text() == (
        f"PGPASSWORD={env['PGPASSWORD']}\nPGPASSWORD_EXPIRES_ON={env['PGPASSWORD_EXPIRES_ON']}\n"
    )
    assert env["STORAGE_1_ACCESS_TOKEN"] == (out / "storage-1").read_text()
    assert jwt_claims(env["PGPASSWORD"])["aud"].startswith("https://vault.azure.net")


def test_signals_are_forwarded(emulator: Emulator, tmp_path: Path, daemon_factory: Factory) -> None:
    env = {**emulator_env(emulator, tmp_path / "out"), "EXIT_ON_STOP": "7"}
    env["ENTRA_TOKEND_LISTEN"] = "127.0.0.1:0"  # metrics as in run
    d = daemon_factory("exec", "--config", _config(tmp_path), "--", *_recorder(tmp_path), env=env)
    wait_until(lambda: _envs(tmp_path), timeout=60, what="the program's start")
    expiry = sample_value(d.scrape(), "entra_tokend_token_expiry_timestamp_seconds", token="a")
    assert int(expiry or 0) == int(_envs(tmp_path)[0]["A_ACCESS_TOKEN_EXPIRES_ON"])
    sent = [signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT]
    for sig in sent:
        d.signal(sig)
        wait_until(lambda s=sig: s.name in _lines(tmp_path), timeout=30, what=sig.name)  # type: ignore[misc]
    d.signal(signal.SIGTERM)
    assert d.proc.wait(timeout=30) == 7  # the program's own status after TERM
    assert [line for line in _lines(tmp_path) if not line.startswith("env ")] == [
        *(s.name for s in sent),
        "SIGTERM",
    ]


def test_a_refresh_restarts_the_program_with_the_new_token(
    emulator: Emulator, tmp_path: Path, daemon_factory: Factory
) -> None:
    emulator.access_token_lifetime = 2
    _hold_refreshes(emulator)
    out = tmp_path / "out"
    d = daemon_factory(
        "exec", "--config", _config(tmp_path), "--", *_recorder(tmp_path),
        env=emulator_env(emulator, out),
    )  # fmt: skip
    wait_until(lambda: _envs(tmp_path), timeout=60, what="the program's start")
    emulator.clear_faults()  # the next refresh succeeds
    wait_until(lambda: len(_envs(tmp_path)) >= 2, timeout=60, what="a restart")
    first, second = (env["A_ACCESS_TOKEN"] for env in _envs(tmp_path)[:2])
    assert first != second
    assert jwt_claims(second)["iat"] >= jwt_claims(first)["iat"]
    assert second in emulator.issued_tokens
    assert d.wait_event("token refreshed; restarting the program", token="a")
    # The first program got SIGTERM, exited on it (0: its handler's status), then the next
    # one started.
    lines = _lines(tmp_path)
    assert lines[1] == "SIGTERM"
    assert lines[2].startswith("env ")
    started = d.wait_event("program started")
    assert d.wait_event("program stopped for a restart")["pid"] == started["pid"]
    assert d.wait_event("program stopped for a restart")["exit_status"] == 0
    assert d.wait_event("program restarted")["pid"] != started["pid"]
    # Refreshes keep coming (2 s tokens): the program now running may still be starting, so
    # its status on SIGTERM is its handler's 0 or the default action's 143.
    assert d.stop() in (0, 128 + signal.SIGTERM)


def test_signal_on_refresh_keeps_the_program(
    emulator: Emulator, tmp_path: Path, daemon_factory: Factory
) -> None:
    emulator.access_token_lifetime = 2
    _hold_refreshes(emulator)
    out = tmp_path / "out"
    d = daemon_factory(
        "exec", "--config", _config(tmp_path), "--signal", "HUP", "--", *_recorder(tmp_path),
        env=emulator_env(emulator, out),
    )  # fmt: skip
    wait_until(lambda: _envs(tmp_path), timeout=60, what="the program's start")
    emulator.clear_faults()
    wait_until(lambda: "SIGHUP" in _lines(tmp_path), timeout=60, what="SIGHUP on a refresh")
    assert d.count("token refreshed; signalling the program", token="a", signal="SIGHUP") >= 1
    assert len(_envs(tmp_path)) == 1
    assert d.count("program restarted") == 0
    d.signal(signal.SIGTERM)
    assert d.proc.wait(timeout=30) == 0  # the same program, its handler's status


def test_sigterm_then_the_grace_period_then_sigkill(
    emulator: Emulator, tmp_path: Path, daemon_factory: Factory
) -> None:
    env = {**emulator_env(emulator, tmp_path / "out"), "IGNORE_TERM": "1"}
    d = daemon_factory(
        "exec",
        "--config",
        _config(tmp_path),
        "--grace",
        "0.5",
        "--",
        *_recorder(tmp_path),
        env=env,
    )
    wait_until(lambda: _envs(tmp_path), timeout=60, what="the program's start")
    d.signal(signal.SIGTERM)
    assert d.proc.wait(timeout=30) == 128 + signal.SIGKILL
    d.wait_event("program still running after the grace period; killing it")
    assert "SIGTERM" not in _lines(tmp_path)  # ignored, as the program chose


@pytest.mark.parametrize(("kind", "status"), [("missing", 127), ("not executable", 126)])
def test_a_program_that_cannot_start(
    emulator: Emulator, tmp_path: Path, kind: str, status: int
) -> None:
    program = tmp_path / "prog"
    if kind == "not executable":
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o644)
    result = run_cli(
        "exec",
        "--config",
        _config(tmp_path),
        "--",
        str(program),
        env=emulator_env(emulator, tmp_path / "out"),
    )
    assert result.returncode == status
    line = next(json.loads(x) for x in result.stderr.splitlines() if "could not start" in x)
    reason = "No such file or directory" if status == 127 else "Permission denied"
    assert line["reason"] == reason
    assert line["program"] == str(program)


def test_configuration_errors_exit_2(emulator: Emulator, tmp_path: Path) -> None:
    env = emulator_env(emulator, tmp_path / "out")
    bad = write_config(tmp_path / "bad.toml", {"a": STORAGE}, refresh_bogus=1)
    result = run_cli("exec", "--config", str(bad), "--", "true", env=env)
    assert result.returncode == 2
    assert "refresh_bogus" in result.stderr
    body = "".join(f'[token.{n}]\nscope = "{STORAGE}"\nformat = "env"\n' for n in ("x", "y"))
    result = run_cli("exec", "--config", _config(tmp_path, {}, body), "--", "true", env=env)
    assert result.returncode == 2
    assert "token.x and token.y would both set ACCESS_TOKEN" in result.stderr
    result = run_cli("exec", "--config", _config(tmp_path), env=env)
    assert result.returncode == 2
    assert "a command is needed" in result.stderr
    result = run_cli("exec", "--signal", "NOPE", "--", "true", env=env)
    assert result.returncode == 2
    assert "unknown signal" in result.stderr
    assert not (tmp_path / "out" / "x").exists()


ORPHANER = """\
import os, sys
fifo, ready = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    if os.fork() == 0:  # an orphan once its parent exits; it exits when the test says so
        os.execv("/bin/sh", ["sh", "-c", f"read x < {fifo}", "orphan-of-exec"])
    os._exit(0)
os.wait()
open(ready, "w").close()
os.execv("/bin/sleep", ["sleep", "1000"])
"""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_as_pid_1_exec_reaps_orphans(emulator: Emulator, tmp_path: Path) -> None:
    """In a container without an init, exec is PID 1: its program's orphans must not stay
    zombies, and the program's status still comes back (one owner of waitpid)."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    from entra_tokend.reaper import children

    fifo, ready = tmp_path / "fifo", tmp_path / "ready"
    os.mkfifo(fifo)
    (tmp_path / "orphaner.py").write_text(ORPHANER)
    program = [sys.executable, str(tmp_path / "orphaner.py"), str(fifo), str(ready)]
    argv = cli("exec", "--config", _config(tmp_path), "--", *program)
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv],
        env=base_env(emulator_env(emulator, tmp_path / "out")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(ready.exists, timeout=60, what="the program's start")
        inner = wait_until(lambda: next(iter(children(proc.pid)), None), timeout=10)
        orphan = wait_until(
            lambda: next((p for p in children(inner) if "orphan-of-exec" in _cmdline(p)), None),
            timeout=10,
            what="the orphan re-parented to exec",
        )
        fifo.write_text("x\n")  # the orphan exits: a zombie until PID 1 reaps it
        wait_until(lambda: orphan not in children(inner), timeout=10, what="the orphan reaped")
        os.kill(inner, signal.SIGTERM)  # unshare itself ignores SIGTERM while it waits
        assert proc.wait(30) == 128 + signal.SIGTERM  # sleep's status, passed through
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_a_configuration_error_from_entra_never_starts_the_program(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.inject(Fault("status", status=400, aadsts=700213, count=100))
    marker = tmp_path / "started"
    result = run_cli(
        "exec", "--config", _config(tmp_path), "--", "touch", str(marker),
        env=emulator_env(emulator, tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "configuration error from Entra; giving up" in result.stderr
    assert not marker.exists()


def test_the_program_starts_with_no_signal_blocked_or_ignored(
    emulator: Emulator, tmp_path: Path
) -> None:
    """exec holds its signals during start-up (``signals.hold``), and may itself have been
    started with SIGHUP ignored (nohup): the program inherits neither."""
    program = "print(open('/proc/self/status').read())"

    def ignore_hup() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    result = subprocess.run(
        cli("exec", "--config", _config(tmp_path), "--", sys.executable, "-c", program),
        env=base_env(emulator_env(emulator, tmp_path / "out")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=ignore_hup,
    )
    assert result.returncode == 0, result.stderr
    status = dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)
    assert int(status["SigBlk"], 16) == 0
    ignored = int(status["SigIgn"], 16)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        assert not ignored >> (sig - 1) & 1, sig.name


def test_a_sigterm_during_start_up_ends_exec_before_the_program(
    emulator: Emulator, tmp_path: Path, daemon_factory: Factory
) -> None:
    """Held from the CLI's first line (``signals.hold``), then applied: a SIGHUP is ignored
    (nothing to forward it to), a SIGTERM ends exec with 128+15 and no program."""
    emulator.inject(Fault("hang", count=1000, delay=30))  # the program cannot start meanwhile
    marker = tmp_path / "started"
    d = daemon_factory(
        "exec", "--config", _config(tmp_path), "--", "touch", str(marker),
        env=emulator_env(emulator, tmp_path / "out"),
    )  # fmt: skip

    def held() -> bool:
        try:
            status = Path(f"/proc/{d.pid}/status").read_text()
        except OSError:
            return d.proc.poll() is not None
        blocked = next(x for x in status.splitlines() if x.startswith("SigBlk:"))
        return bool(int(blocked.split()[1], 16) >> (signal.SIGTERM - 1) & 1)

    wait_until(held, timeout=30, what="SIGTERM held")
    d.signal(signal.SIGHUP)
    d.signal(signal.SIGTERM)
    assert d.proc.wait(timeout=30) == 128 + signal.SIGTERM
    d.wait_event("signal ignored: the program has not started", signal="SIGHUP")
    d.wait_event("stopping before the program started", signal="SIGTERM")
    assert not marker.exists()


def test_variable_names_and_signal_names() -> None:
    from entra_tokend.model import OutputSpec, TokenSpec
    from entra_tokend.signals import parse_signal
    from entra_tokend.supervise import clashes, variables

    def spec(name: str, fmt: str = "raw", env_name: str = "ACCESS_TOKEN") -> TokenSpec:
        output = OutputSpec(Path("/t") / name, fmt, env_name=env_name)
        return TokenSpec(name, STORAGE, "default", output)

    assert variables(spec("my-db.x")) == ("MY_DB_X_ACCESS_TOKEN", "MY_DB_X_ACCESS_TOKEN_EXPIRES_ON")
    assert variables(spec("1a"))[0] == "_1A_ACCESS_TOKEN"
    assert variables(spec("pg", "env", "PGPASSWORD"))[0] == "PGPASSWORD"
    assert clashes([spec("a-b"), spec("a_b")]) != []
    assert clashes([spec("a"), spec("b", "env")]) == []
    assert parse_signal("hup") == parse_signal("SIGHUP") == parse_signal("1") == signal.SIGHUP
    with pytest.raises(ValueError, match="unknown signal"):
        parse_signal("SIGNOPE")


def test_a_valid_file_from_an_earlier_run_is_replaced(emulator: Emulator, tmp_path: Path) -> None:
    """The program always starts with a token acquired now (as ``run --once``), even when a
    still-valid one from a moment ago is on disk (default refresh settings)."""
    out = tmp_path / "out"
    config = write_config(tmp_path / "c.toml", {"a": STORAGE})
    seen = []
    for _ in range(2):
        result = run_cli(
            "exec", "--config", str(config), "--",
            sys.executable, "-c", "import os; print(os.environ['A_ACCESS_TOKEN'])",
            env=emulator_env(emulator, out),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        seen.append(result.stdout.strip())
    assert seen[0] != seen[1]
    assert seen == emulator.issued_tokens[-2:]
    assert (out / "a").read_text() == seen[1]
