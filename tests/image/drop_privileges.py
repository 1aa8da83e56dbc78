"""Start a command as a container runtime starts a container's process: numeric ids, no privileges.

Usage (as root, inside the container, with the image's own interpreter)::

    python3 -I drop_privileges.py UID GID GROUPS -- COMMAND [ARG...]

GROUPS is a comma-separated list of supplementary group ids (may be empty), as Kubernetes
gives a pod's fsGroup to every container. In order: every capability leaves the bounding set
and the inheritable set, no_new_privs is set, then the groups, GID and UID change (a non-zero
UID clears the permitted and effective sets), and COMMAND replaces this process (it keeps the
PID, so under systemd-nspawn it is the container's PID 1, as an image's ENTRYPOINT is under
Docker). The ids
are numbers on purpose: the image's /etc/passwd is not consulted (runAsUser works the same way),
which is also why systemd-nspawn's --user cannot be used here: it resolves the user with
``getent`` inside the container, and a distroless image has none.

Standard library only (the image has nothing else outside its venv). Exits 2 on a usage error;
an OSError from a failing system call propagates (the container then exits non-zero).
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _prctl(libc: ctypes.CDLL, option: int, arg: int) -> None:
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {arg}): {os.strerror(errno)}")


def _clear_inheritable(libc: ctypes.CDLL) -> None:
    # setuid() empties the permitted and effective sets but leaves the inheritable one (nspawn
    # starts PID 1 with a full one); emptying it also empties the ambient set.
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for half in data:
        half.inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def drop_to(uid: int, gid: int, groups: list[int]) -> None:
    """Become uid:gid with ``groups``, with an empty bounding set and no_new_privs."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        _prctl(libc, PR_CAPBSET_DROP, cap)
    _clear_inheritable(libc)
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def main(argv: list[str]) -> int:
    """Parse ``UID GID GROUPS -- COMMAND...``, drop privileges, exec COMMAND (no return)."""
    if len(argv) < 5 or argv[3] != "--" or not argv[0].isdigit() or not argv[1].isdigit():
        print("usage: drop_privileges.py UID GID GROUPS -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    uid, gid = int(argv[0]), int(argv[1])
    if uid == 0 or gid == 0:
        print("drop_privileges.py: UID and GID must not be 0", file=sys.stderr)
        return 2
    groups = [int(g) for g in argv[2].split(",") if g]
    drop_to(uid, gid, groups)
    command = argv[4:]
    # Replacing this process is the point: COMMAND is the container's process, not a child.
    os.execvp(command[0], command)  # noqa: S606
    return 1  # not reached: execvp returns only by raising


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
