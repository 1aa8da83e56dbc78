"""Checks that ask the host: user and group lookups, the output directory, CA files.

Kept apart from ``validate`` (pure) so that the pure rules can be tested and fuzzed without a
filesystem, and so that it is clear which checks depend on the machine the config runs on.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from entra_tokend.config.schema import ENV_OUTPUT_DIR
from entra_tokend.config.validate import Problems, has_nul
from entra_tokend.exchange.tokenproxy import pem_problem
from entra_tokend.files import read_regular


def owner(value: Any, where: str, p: Problems, *, group: bool) -> int | None:
    """A user (or group) name or id → its numeric id, like chown(1): a name first, then an id."""
    if value is None:
        return None
    kind = "group" if group else "user"
    if isinstance(value, int) and not isinstance(value, bool):
        # 2**32 - 1 is (uid_t)-1, which chown reads as "leave unchanged".
        if 0 <= value < 2**32 - 1:
            return value
        p.add(f"{where}: {value} is not a valid {kind} id")
        return None
    try:
        return grp.getgrnam(str(value)).gr_gid if group else pwd.getpwnam(str(value)).pw_uid
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        text = str(value)
        if text.isascii() and text.isdigit():
            return owner(int(text), where, p, group=group)
        p.add(f"{where}: no such {kind} '{value}'")
        return None


def output_dir(path: Path, p: Problems) -> None:
    """The output directory, if it exists: a directory we can write. (A world-writable one is
    allowed with a warning at start: Kubernetes' default emptyDir with fsGroup is one.)"""
    if has_nul(str(path), "output_dir", p):
        return
    fix = f"(choose another with --output-dir or {ENV_OUTPUT_DIR})"
    try:
        st = path.stat()
    except FileNotFoundError:
        return  # created at start-up
    except NotADirectoryError:
        p.add(f"output_dir: {path} cannot be created: a parent is not a directory {fix}")
        return
    except OSError as exc:
        p.add(f"output_dir: {path} cannot be examined: {exc.strerror} {fix}")
        return
    if not stat.S_ISDIR(st.st_mode):
        p.add(f"output_dir: {path} exists but is not a directory {fix}")
    elif not os.access(path, os.W_OK | os.X_OK):
        p.add(f"output_dir: {path} is not writable by uid {os.getuid()} {fix}")


def ca_file(path: Path | None, where: str, p: Problems) -> None:
    """A CA bundle must be a readable file."""
    if path is None:
        return
    if not path.is_file():
        p.add(f"{where}: {path} is not a readable file")
        return
    try:
        read_regular(path, 0)
    except OSError as exc:
        p.add(f"{where}: {path} cannot be read: {exc.strerror or exc}")


MAX_CA_BYTES = 1024 * 1024
"""The largest CA bundle read (bytes); a bundle of every public root is ~250 KB."""


def token_proxy_ca_file(path: Path | None, where: str, p: Problems) -> None:
    """The identity-binding proxy's CA bundle at start: a readable, non-empty PEM file.

    An empty file is an error here, as in azure-identity 1.27
    (``_internal/token_binding_transport_mixin.py`` ``_load_ca_file_to_data``: "CA file ... is
    empty" on the first read); later, mid-rotation, an empty file keeps the previous trust.
    """
    if path is None:
        return
    try:
        data = read_regular(path, MAX_CA_BYTES)[:MAX_CA_BYTES]
    except OSError as exc:
        p.add(f"{where}: {path} cannot be read: {exc.strerror or exc}")
        return
    why = pem_problem(data.decode("utf-8", errors="replace"))
    if why:
        p.add(f"{where}: {path} {why}")


MAX_SECRET_BYTES = 4096


def secret_file(path: Path, where: str, p: Problems) -> str | None:
    """Read the endpoint's header secret from ``path`` (surrounding whitespace stripped).

    Problems name the file, never its content. A secret file must be a regular file of at most
    ``MAX_SECRET_BYTES`` bytes of UTF-8 text, readable by the daemon.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        p.add(f"{where}: cannot read {path}: {exc.strerror}")
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            p.add(f"{where}: {path} is not a regular file")
            return None
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    except OSError as exc:
        p.add(f"{where}: cannot read {path}: {exc.strerror}")
        return None
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = ""
    if len(data) > MAX_SECRET_BYTES or not text or any(c.isspace() for c in text):
        p.add(
            f"{where}: {path} must hold one secret (non-empty UTF-8 text without spaces, "
            f"at most {MAX_SECRET_BYTES} bytes)"
        )
        return None
    return text


TEMPLATE_LIMIT = 64 * 1024
"""The largest ``template_file`` read (bytes): templates are a few lines."""


def template_file(value: Any, base: Path, where: str, p: Problems) -> str | None:
    """The UTF-8 text of a ``template_file`` (relative to the config file's directory)."""
    if not isinstance(value, str) or not value:
        p.add(f"{where}: must be a path string")
        return None
    if has_nul(value, where, p):
        return None
    path = base / value
    try:
        data = read_regular(path, TEMPLATE_LIMIT)  # a FIFO there never blocks a reload
    except OSError as exc:
        p.add(f"{where}: cannot read {path}: {exc.strerror or exc}")
        return None
    if len(data) > TEMPLATE_LIMIT:
        p.add(f"{where}: {path} is larger than {TEMPLATE_LIMIT} bytes")
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        p.add(f"{where}: {path} is not UTF-8 text")
        return None
