"""Helpers for the hardening tests: fast settings, temp files, processes, mounts."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from entra_tokend.reaper import children

# Fast retries and no refresh floor (settings for support.write_config).
FAST: dict[str, Any] = {
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "min_refresh_interval": 0,
    "request_timeout": 2.0,
}
READER = Path(__file__).with_name("token_reader.py")


def sha(text: str) -> str:
    """sha256 hex of a token, as the reader reports them."""
    return hashlib.sha256(text.encode()).hexdigest()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def temp_files(directory: Path) -> list[str]:
    """Names in ``directory`` that look like our temp files."""
    return sorted(n for n in os.listdir(directory) if ".entra-tokend-" in n and n.endswith(".tmp"))


def try_mount_tmpfs(target: Path, size: str) -> str | None:
    """Mount a small tmpfs at ``target``; None on success, else why not (to skip)."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return f"cannot mount a tmpfs here: {result.stderr.strip()}"
    return None


def umount(target: Path) -> None:
    """Unmount (lazily if something still holds it open)."""
    if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def remount(target: Path, mode: str) -> None:
    """Remount ``target`` read-only (``ro``) or read-write (``rw``)."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(target)], check=True)


def processes_with(marker: str) -> list[int]:
    """Pids of the processes whose command line contains ``marker`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def zombies_of(pid: int) -> list[int]:
    """The children of ``pid`` that have exited and not been reaped (state ``Z``)."""
    zombies = []
    for child in children(pid):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state == "Z":
            zombies.append(child)
    return zombies
