"""The host checks' file and account look-ups: output_dir, CA bundles, ``template_file``,
``secret_file``, user and group names. Each returns its answer and adds one line per problem
(``KEY: ...``, naming the path, never a file's content) to a list.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

from entra_tokend.config.schema import ENV_OUTPUT_DIR
from entra_tokend.config.validate import Problems
from entra_tokend.config.validate_endpoint import secret_problem
from entra_tokend.config.validate_outputs import template_text
from entra_tokend.outputs.writer import DIR_MODE
from entra_tokend.util.files import FileTooLarge, NotRegularFile, read_bounded
from entra_tokend.util.pem import pem_problem

OUTPUT_DIR_FIX = f"--output-dir or {ENV_OUTPUT_DIR}"

MAX_CA_BYTES = 1024 * 1024
"""The largest CA bundle read (bytes); a bundle of every public root is ~250 KB."""
MAX_TEMPLATE_BYTES = 64 * 1024
"""The largest ``template_file`` read (bytes): templates are a few lines."""
MAX_SECRET_BYTES = 4096
"""The largest ``secret_file`` read (bytes); the secret is a GUID-sized header value."""


def owner(value: str, where: str, p: Problems, *, group: bool) -> int | None:
    """A user (or group) name → its numeric id, like chown(1): a name first, then an id."""
    kind = "group" if group else "user"
    try:
        return grp.getgrnam(value).gr_gid if group else pwd.getpwnam(value).pw_uid
    except (KeyError, ValueError):  # ValueError: an embedded NUL
        if value.isascii() and value.isdigit():
            if int(value) < 2**32 - 1:  # 2**32 - 1 is (uid_t)-1: chown's "leave unchanged"
                return int(value)
            p.add(f"{where}: {value} is not a valid {kind} id")
            return None
        p.add(f"{where}: no such {kind} '{value}'")
        return None


def output_dir(path: Path) -> tuple[str | None, str | None]:
    """(problem, note) for ``path`` as output_dir: an existing directory we can write, or one
    ``run`` can create (its nearest existing parent writable). A world-writable directory is
    no problem (Kubernetes' emptyDir with fsGroup is one); ``world_writable`` words its
    warning."""
    fix = f"(choose another with {OUTPUT_DIR_FIX})"
    try:
        st = path.stat()
    except FileNotFoundError:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            why = f"{parent} is not writable by uid {os.getuid()}"
            return f"output_dir: {path} cannot be created: {why} {fix}", None
        note = f"output_dir: {path} does not exist yet; run creates it (and missing parents) "
        return None, note + f"with mode {DIR_MODE:04o}"
    except NotADirectoryError:
        return f"output_dir: {path} cannot be created: a parent is not a directory {fix}", None
    except (OSError, ValueError) as exc:  # ValueError: a NUL, reported by load_config
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        return f"output_dir: {path} cannot be examined: {why} {fix}", None
    if not stat.S_ISDIR(st.st_mode):
        return f"output_dir: {path} exists but is not a directory {fix}", None
    if not os.access(path, os.W_OK | os.X_OK):
        return f"output_dir: {path} is not writable by uid {os.getuid()} {fix}", None
    note = f"output_dir: {path} exists (mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid})"
    warning = world_writable(st.st_mode)
    return None, note + (f"; {warning}" if warning else " and is writable")


def world_writable(mode: int) -> str | None:
    """The warning for an output_dir whose ``mode`` lets anyone replace token files (world-
    writable without the sticky bit: a disk-backed emptyDir with fsGroup is 2777), else None.
    Every write stays safe (O_EXCL temp files, nothing followed, rename); a neighbour can
    delete a token, which the next refresh restores."""
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        return (
            "output_dir is world-writable without the sticky bit; other users of the volume "
            "can delete or replace token files (use a volume only this pod writes, or set "
            "allow_world_writable = true to silence this)"
        )
    return None


class _Refused(OSError):
    """A file refused for its ``fstat`` (owner, mode) before anything was read."""


def _read(
    path: Path,
    limit: int,
    where: str,
    p: Problems,
    *,
    ca: bool = False,
    check: Callable[[os.stat_result], None] | None = None,
) -> tuple[bytes, os.stat_result] | None:
    """``read_bounded`` with each failure as one problem line naming ``where`` and ``path``."""
    try:
        return read_bounded(path, limit, check=check)  # a FIFO there never blocks a reload
    except _Refused as exc:
        p.add(f"{where}: {path} {exc.strerror}")
    except FileTooLarge:
        p.add(f"{where}: {path} is larger than {limit} bytes")
    except NotRegularFile as exc:
        p.add(
            f"{where}: {path} {'is a directory' if exc.is_directory else 'is not a regular file'}"
        )
    except OSError as exc:
        # (CA files have always been worded "PATH cannot be read"; the others "cannot read PATH".)
        why = exc.strerror or exc
        p.add(
            f"{where}: {path} cannot be read: {why}"
            if ca
            else f"{where}: cannot read {path}: {why}"
        )
    return None


def ca_file(path: Path, where: str, p: Problems) -> None:
    """A CA bundle (``ca_file``) must be a readable regular file of at most MAX_CA_BYTES."""
    if not path.is_file():
        p.add(f"{where}: {path} is not a readable file")
        return
    _read(path, MAX_CA_BYTES, where, p, ca=True)


def token_proxy_ca_file(path: Path, where: str, p: Problems) -> None:
    """The identity-binding proxy's CA bundle at start: a readable, non-empty PEM file.

    An empty file is an error here, as in azure-identity 1.27
    (``_internal/token_binding_transport_mixin.py`` ``_load_ca_file_to_data``: "CA file ... is
    empty" on the first read); later, mid-rotation, an empty file keeps the previous trust.
    """
    read = _read(path, MAX_CA_BYTES, where, p, ca=True)
    if read is not None and (why := pem_problem(read[0].decode("utf-8", errors="replace"))):
        p.add(f"{where}: {path} {why}")


def template_file(path: Path, where: str, p: Problems) -> str | None:
    """The checked UTF-8 text of a ``template_file``."""
    text = text_file(path, where, p)
    return None if text is None else template_text(text, where, p)


def text_file(path: Path, where: str, p: Problems) -> str | None:
    """The UTF-8 text of a template file (at most MAX_TEMPLATE_BYTES), unchecked."""
    read = _read(path, MAX_TEMPLATE_BYTES, where, p)
    if read is None:
        return None
    try:
        return read[0].decode()
    except UnicodeDecodeError:
        p.add(f"{where}: {path} is not UTF-8 text")
        return None


def secret_file(path: Path, where: str, p: Problems, warnings: list[str]) -> str | None:
    """The endpoint's header secret in ``path`` (surrounding whitespace stripped).

    Symlinks are followed: a Kubernetes Secret volume holds ``NAME -> ..data/NAME`` and
    ``..data -> ..2026_...`` (kubelet's atomic writer). A file other users may *write* is
    refused before it is read (they could choose the secret); one they may *read*, or one
    owned by a user other than root and the daemon's, is accepted with a warning
    (Kubernetes' default ``defaultMode`` is 0644; the secret is then known to every process
    of the container that can see the volume). Problems name the file, never its content.
    """
    read = _read(path, MAX_SECRET_BYTES, where, p, check=_private)
    if read is None:
        return None
    data, st = read
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = ""
    if not text or any(c.isspace() for c in text):
        p.add(
            f"{where}: {path} must hold one secret (non-empty UTF-8 text without spaces, "
            f"at most {MAX_SECRET_BYTES} bytes)"
        )
        return None
    if why := secret_problem(text, "secret_file"):
        p.add(why)
        return None
    if st.st_mode & stat.S_IROTH:
        warnings.append(
            f"{where}: {path} is readable by every user (mode {stat.S_IMODE(st.st_mode):04o}); "
            "make it 0400 or 0600 (Kubernetes: defaultMode: 0400 on the Secret volume)"
        )
    if st.st_uid not in (0, os.geteuid()):
        warnings.append(
            f"{where}: {path} is owned by uid {st.st_uid}, neither root nor this daemon's uid "
            f"{os.geteuid()}; that user can change the secret"
        )
    return text


def _private(st: os.stat_result) -> None:
    """Refuse, before reading, a secret file that other users may write (they could choose
    the secret every local process then needs)."""
    if st.st_mode & stat.S_IWOTH:
        raise _Refused(errno.EPERM, "is writable by every user; make it 0600 or 0400")
