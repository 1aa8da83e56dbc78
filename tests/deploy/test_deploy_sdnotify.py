"""sd_notify: datagrams to a real AF_UNIX socket, and the real daemon talking to it."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from entra_tokend import sdnotify


class Receiver:
    """A bound AF_UNIX datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # the NOTIFY_SOCKET value

    def receive(self, timeout: float = 10.0) -> bytes:
        """The next datagram; fails the test at the deadline."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no datagram within {timeout} s") from None

    def receive_until(self, line: str, timeout: float = 20.0) -> list[list[str]]:
        """Every datagram (split into lines) up to and including the first containing ``line``."""
        deadline = time.monotonic() + timeout
        seen: list[list[str]] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{line!r} not received within {timeout} s; got {seen}")
            lines = self.receive(remaining).decode().split("\n")
            seen.append(lines)
            if line in lines:
                return seen


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="sd-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def path_receiver(short_dir: Path) -> Iterator[Receiver]:
    path = short_dir / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield Receiver(sock, str(path))


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"entra-tokend-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Receiver(sock, "@" + name)


def test_notify_sends_all_lines_as_one_datagram(
    path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.address)
    assert sdnotify.notify("READY=1", "STATUS=2 tokens on disk") is True
    assert path_receiver.receive() == b"READY=1\nSTATUS=2 tokens on disk"


def test_notify_reaches_an_abstract_socket(
    abstract_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_receiver.address)
    assert sdnotify.notify("WATCHDOG=1") is True
    assert abstract_receiver.receive() == b"WATCHDOG=1"


def test_a_newline_in_free_text_cannot_inject_an_assignment(
    path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.address)
    assert sdnotify.notify("STATUS=refresh failed:\nREADY=1\r\nSTOPPING=1") is True
    lines = path_receiver.receive().decode().split("\n")
    assert len(lines) == 1
    assert lines[0].startswith("STATUS=refresh failed:")


@pytest.mark.parametrize("value", [None, "", "relative/notify", "@", "vsock:2:1234"])
def test_notify_is_a_no_op_without_a_usable_socket(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False


def test_notify_without_lines_sends_nothing(
    path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.address)
    assert sdnotify.notify() is False
    assert sdnotify.notify("STATUS=marker") is True
    # The first datagram to arrive is the marker: the empty call sent nothing before it.
    assert path_receiver.receive() == b"STATUS=marker"


def test_notify_reports_failure_when_nobody_listens(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "absent"))
    assert sdnotify.notify("READY=1") is False
    # A socket file whose owner has gone away: ECONNREFUSED, also not an exception.
    stale = short_dir / "stale"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(stale))
    monkeypatch.setenv("NOTIFY_SOCKET", str(stale))
    assert sdnotify.notify("READY=1") is False


def test_notify_never_blocks_on_a_full_queue(
    path_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nobody reads the receiver, so its queue fills; a blocking send would hang here until the
    # pytest timeout. Instead notify must start returning False.
    monkeypatch.setenv("NOTIFY_SOCKET", path_receiver.address)
    results = [sdnotify.notify("WATCHDOG=1") for _ in range(5000)]
    assert results[0] is True
    assert False in results
    # Once drained, the socket works again.
    path_receiver.sock.setblocking(False)
    for _ in range(results.count(True)):
        path_receiver.sock.recv(64)
    path_receiver.sock.setblocking(True)
    assert sdnotify.notify("STATUS=drained") is True
    assert path_receiver.receive() == b"STATUS=drained"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("abc", None, None),
        ("-5", None, None),
        ("+5", None, None),
        (" 5", None, None),
        ("1_000", None, None),
        ("30000000", None, 30.0),
        ("500000", None, 0.5),
        ("30000000", "self", 30.0),
        ("30000000", "other", None),
        ("30000000", "junk", None),
    ],
)
def test_watchdog_interval_follows_sd_watchdog_enabled(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        pid_value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
        monkeypatch.setenv("WATCHDOG_PID", pid_value)
    assert sdnotify.watchdog_interval() == expected


def test_the_daemon_reports_ready_only_with_tokens_on_disk(
    path_receiver: Receiver,
    emulator: Any,
    daemon_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The Type=notify contract of systemd/entra-tokend.service, against the real daemon."""
    from entra_tokend.emulator import Fault

    # One of the two first exchanges is answered a second late: a daemon that said READY=1 after
    # the first token rather than after the whole round would be caught below with a token file
    # still missing.
    emulator.inject(Fault("delay", delay=1.0, count=1))
    out = tmp_path / "tokens"
    daemon = daemon_factory(
        "run",
        "--output-dir",
        str(out),
        "--listen",
        "",
        "--token",
        "arm=https://management.azure.com/.default",
        "--token",
        "storage=https://storage.azure.com/.default",
        env={
            **emulator.env(),
            "NOTIFY_SOCKET": path_receiver.address,
            # Half of this, 0.2 s, between pings: several arrive while the test waits.
            "WATCHDOG_USEC": "400000",
        },
    )
    before_ready = path_receiver.receive_until("READY=1")
    # READY=1 is sent only after the first round: both files exist when it arrives.
    assert (out / "arm").read_text().strip()
    assert (out / "storage").read_text().strip()
    assert emulator.pending_faults() == 0
    ready_datagram = before_ready[-1]
    assert any(line.startswith("STATUS=") for line in ready_datagram), ready_datagram

    after_ready = path_receiver.receive_until("WATCHDOG=1")
    assert all("READY=1" not in d for d in after_ready), "READY=1 must be sent once"

    daemon.signal(signal.SIGTERM)
    path_receiver.receive_until("STOPPING=1")
    assert daemon.stop() == 0
