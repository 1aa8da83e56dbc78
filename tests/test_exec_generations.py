"""``entra-tokend exec``: each generation of the program (a start, every restart) is ended whole.
What it started in the background — a plain ``cmd &`` or a double fork into a session of its own
— is SIGKILLed when the generation ends (a restart, a stop, its own exit), so no process holding
an older token is left behind; the running generation's own processes are never touched."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

from entra_tokend.emulator import Emulator, Fault
from entra_tokend.reaper import MARKER_VARIABLE
from support import STORAGE, DaemonProcess, emulator_env, run_cli, wait_until, write_config

Factory = Callable[..., DaemonProcess]

# Records "GENERATION KIND PID" for a background child and a double-forked one, then runs on
# (or exits with $1 when given).
PROGRAM = """\
gen=$(( $(grep -c main "$RECORD") + 1 ))
sleep 500 &
echo "$gen bg $!" >> "$RECORD"
( setsid sh -c 'echo "'$gen' df $$" >> "$RECORD"; exec sleep 600' & )
while [ "$(grep -c "^$gen df" "$RECORD")" = 0 ]; do :; done
echo "$gen main $$" >> "$RECORD"
[ -n "$1" ] && exit "$1"
sleep 1000
"""


def _config(tmp_path: Path) -> str:
    return str(
        write_config(
            tmp_path / "c.toml",
            {"a": STORAGE},
            backoff_initial=0.05,
            backoff_max=0.2,
            min_refresh_interval=0,
        )
    )


def _pids(record: Path, generation: int) -> dict[str, int]:
    lines = record.read_text().split("\n") if record.exists() else []
    return {
        kind: int(pid)
        for gen, kind, pid in (line.split() for line in lines if line)
        if int(gen) == generation
    }


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _marker(pid: int) -> str | None:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        name, _, value = item.decode().partition("=")
        if name == MARKER_VARIABLE:
            return value
    return None


def _program(tmp_path: Path, *args: str) -> tuple[Path, list[str]]:
    (tmp_path / "program.sh").write_text(PROGRAM)
    record = tmp_path / "record"
    record.write_text("")
    return record, ["sh", str(tmp_path / "program.sh"), *args]


def test_what_a_program_leaves_running_is_killed_when_it_exits(
    emulator: Emulator, tmp_path: Path
) -> None:
    record, argv = _program(tmp_path, "3")
    out = tmp_path / "out"
    env = {**emulator_env(emulator, out), "RECORD": str(record)}
    result = run_cli("exec", "--config", _config(tmp_path), "--", *argv, env=env)
    assert result.returncode == 3, result.stderr
    left = _pids(record, 1)
    assert set(left) == {"bg", "df", "main"}
    wait_until(lambda: not any(_alive(left[k]) for k in ("bg", "df")), timeout=30, what="none left")


def _hold(emulator: Emulator) -> None:
    """The next token request is answered, every later one fails (503, retried) until the next
    ``clear_faults``: exactly one refresh, so exactly one restart."""
    emulator.inject(Fault("delay", delay=0.0), Fault("status", status=503, count=100000))


def test_each_restart_and_the_stop_end_the_generation_with_its_background_processes(
    emulator: Emulator, tmp_path: Path, daemon_factory: Factory
) -> None:
    emulator.access_token_lifetime = 2
    _hold(emulator)  # the first acquisition
    record, argv = _program(tmp_path)
    env = {**emulator_env(emulator, tmp_path / "out"), "RECORD": str(record)}
    d = daemon_factory("exec", "--config", _config(tmp_path), "--", *argv, env=env)
    first = wait_until(lambda: len(_pids(record, 1)) == 3 and _pids(record, 1), timeout=60)
    marker = _marker(first["bg"])
    assert marker is not None
    assert _marker(first["df"]) == _marker(first["main"]) == marker
    emulator.clear_faults()
    _hold(emulator)  # one refresh: one restart
    second = wait_until(lambda: len(_pids(record, 2)) == 3 and _pids(record, 2), timeout=60)
    wait_until(lambda: not any(map(_alive, first.values())), timeout=30, what="generation 1 ended")
    # Generation 2 carries another marker and is left running by generation 1's end.
    assert all(map(_alive, second.values()))
    assert _marker(second["df"]) not in (None, marker)
    d.signal(signal.SIGTERM)
    d.proc.wait(timeout=30)
    assert d.count("program restarted") == 1
    wait_until(lambda: not any(map(_alive, second.values())), timeout=30, what="generation 2 ended")
