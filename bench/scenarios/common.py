"""What every scenario shares: progress output, rounding, and the trust store given to the
daemon and azure-identity."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import benchlib


def log(msg: str) -> None:
    """Progress on stderr, with the load average."""
    print(f"[{time.strftime('%H:%M:%S')} load {benchlib.load()[0]:.2f}] {msg}", file=sys.stderr)


def median(values: list[float]) -> float:
    """Median, rounded to 4 decimals for the results."""
    return round(statistics.median(values), 4)


def mib(kib: int) -> float:
    """KiB to MiB, 2 decimals."""
    return round(kib / 1024, 2)


def trust_files(work: Path, emu: benchlib.EmulatorProcess) -> dict[str, Path]:
    """A full bundle (certifi + the emulator's CA) as ``bundle``, and the same as an OpenSSL
    hashed directory as ``hashed_dir`` (only if ``openssl rehash`` works here)."""
    import certifi

    ca = Path(emu.env["SSL_CERT_FILE"]).read_text()
    public = Path(certifi.where()).read_text()
    bundle = work / "trust" / "bundle.pem"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_text(public.rstrip("\n") + "\n" + ca)
    out = {"bundle": bundle}
    if shutil.which("openssl"):
        hashed = work / "trust" / "hashed"
        hashed.mkdir(exist_ok=True)
        end = "-----END CERTIFICATE-----"
        pems = [p + end + "\n" for p in (public + "\n" + ca).split(end) if "BEGIN" in p]
        for i, pem in enumerate(pems):
            (hashed / f"ca{i:04d}.pem").write_text(pem[pem.index("-----BEGIN") :])
        done = subprocess.run(
            ["openssl", "rehash", str(hashed)], capture_output=True, timeout=60, check=False
        )
        if done.returncode == 0:
            out["hashed_dir"] = hashed
    return out


def trust_env(emu: benchlib.EmulatorProcess, files: dict[str, Path], mode: str) -> dict[str, str]:
    """The emulator's environment with the trust store ``mode`` asks for ("full",
    "emulator-only" or "hashed-dir"); unchanged when the emulator speaks plain http."""
    env = {k: v for k, v in emu.env.items() if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")}
    if not emu.env.get("SSL_CERT_FILE"):
        return env
    if mode == "emulator-only":
        env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = emu.env["SSL_CERT_FILE"]
    elif mode == "hashed-dir":
        env["SSL_CERT_DIR"] = env["REQUESTS_CA_BUNDLE"] = str(files["hashed_dir"])
        env["SSL_CERT_FILE"] = ""  # the daemon treats empty as unset
    else:
        env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = str(files["bundle"])
    return env


@contextlib.contextmanager
def env_of(emu: benchlib.EmulatorProcess, env: dict[str, str]) -> Iterator[None]:
    """Temporarily give ``emu`` another environment for the children started meanwhile."""
    saved = emu.env
    emu.env = env
    try:
        yield
    finally:
        emu.env = saved
