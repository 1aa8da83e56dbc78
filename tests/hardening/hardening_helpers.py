"""Helpers for the hardening tests: configs, metrics, processes, mounts."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

STORAGE = "https://storage.azure.com/.default"
VAULT = "https://vault.azure.net/.default"
# Fast retries and no refresh floor.
FAST = (
    "backoff_initial = 0.05\nbackoff_max = 0.2\nmin_refresh_interval = 0\nrequest_timeout = 2.0\n"
)
READER = Path(__file__).with_name("token_reader.py")


def write_config(path: Path, body: str, *, listen: str = "") -> Path:
    """Write a TOML config: the fast defaults, ``listen`` (none by default), then ``body``."""
    path.write_text(f"{FAST}listen = '{listen}'\n{body}")
    return path


def sha(text: str) -> str:
    """sha256 hex of a token, as the reader reports them."""
    return hashlib.sha256(text.encode()).hexdigest()


def metrics(daemon: Any) -> dict[str, float]:
    """Scrape the daemon's /metrics (its 'listening' log line names the port)."""
    port = int(daemon.wait_event("listening")["listen"].rpartition(":")[2])
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][^ ]*) ([0-9.eE+-]+|NaN|[+-]Inf)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


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
