"""The atomic writer: token files replaced so that no reader ever sees a partial one.

``write_atomic`` replaces a file so that a reader at any moment sees the old complete file or
the new complete file — never a partial, empty or foreign one, even if the process is
SIGKILLed between any two steps or the disk fills. The code is tagged ``# (1)``…``# (10)``
with these steps:

1. Refuse empty data: an empty token file is never a valid one.
2. Open the target's directory (``O_DIRECTORY``); every later step is relative to that fd, so a
   directory swapped in mid-write cannot redirect us. With ``root`` (the output_dir), each
   component below it is opened with ``O_NOFOLLOW`` and must not be another user's directory
   that others may write: a subdirectory a neighbour replaced by a symlink cannot send a token
   file (and, as root, a rename) anywhere else.
3. Refuse a directory at the target's name (the rename would fail there anyway; say why).
4. Create a temp file in that directory with an unpredictable name and
   ``O_CREAT|O_EXCL|O_NOFOLLOW`` (mode 0600): a planted file or symlink makes this fail
   instead of being followed or reused.
5. Write every byte (a short write is continued; ENOSPC/EIO/EROFS fail the write).
6. ``fchown`` (if an owner/group is configured), then ``fchmod`` to the configured mode
   (after the chown, which clears set-id bits).
7. ``fsync`` the file: data, owner and mode are durable before the file gets its name.
8. ``rename`` the temp file over the target: atomic; a symlink planted at the target is
   replaced, never followed.
9. ``fsync`` the directory, so the rename survives a crash (a filesystem that cannot fsync a
   directory, EINVAL/ENOTSUP, is not a failure: the file is already in place).
10. If any step before the rename fails, unlink the temp file; the target is untouched.

What it does not guarantee: a reader that opened the old file keeps reading the old inode
(and hard links to the old file keep the old bytes); two writers of one target are not
serialised — the last rename wins, which is why the daemon holds the directory's lock; with
``durable=False`` (steps 7 and 9 skipped) a power loss may lose the new file or leave an empty
one under the name, though readers of a running system still see only complete files; a
filesystem whose rename is not atomic (some network filesystems) voids the promise; and a temp
file a killed process left behind stays until ``remove_stale_temp_files`` runs at start (it
carries our marker, so it is recognised).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from entra_tokend.model import TEMP_MARKER, Reason, is_temp_name
from entra_tokend.ports import Failure

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class WriteError(Failure):
    """A token file could not be written; the previous file is untouched."""

    reason = Reason.WRITE_ERROR


def temp_name(target: str) -> str:
    """The temp-file name used for ``target``: hidden, marked as ours, unpredictable."""
    # Cut long names so the temp name stays within NAME_MAX (255) whatever the target's length.
    return f".{target[:200]}{TEMP_MARKER}{secrets.token_hex(8)}.tmp"


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "disk full"
    if exc.errno == errno.ELOOP:
        return exc.strerror or "a symlink is planted in the path; not following it"
    if exc.errno == errno.EPERM:
        return (
            "operation not permitted (in a sticky directory, a file another user owns is in "
            "the way: remove it)"
        )
    return exc.strerror or type(exc).__name__


def _open_child(fd: int, part: str) -> int:
    """Open directory ``part`` below ``fd`` without following a symlink there."""
    try:
        return os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP) and _is_symlink(fd, part):
            raise OSError(
                errno.ELOOP, f"{part} is a symlink planted in the path; not following it"
            ) from None
        raise


def _is_symlink(fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_directory(directory: Path, root: Path | None) -> int:
    """An fd for ``directory``; below ``root`` no component may be a symlink, nor another
    user's directory that others may write (see ``_check_not_foreign``)."""
    if root is None or directory == root:
        return os.open(directory, _DIR_FLAGS)
    try:
        parts = directory.relative_to(root).parts
    except ValueError:
        raise WriteError(f"{directory} is outside {root}") from None
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            child = _open_child(fd, part)
            os.close(fd)
            fd = child
            _check_not_foreign(fd, part)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic(
    path: Path,
    data: bytes,
    mode: int,
    uid: int | None = None,
    gid: int | None = None,
    *,
    root: Path | None = None,
    durable: bool = True,
) -> None:
    """Replace ``path`` with ``data`` atomically (see the module doc). Raises WriteError.

    ``durable=False`` skips the two fsyncs (steps 7 and 9): still atomic for readers, but a
    crash may lose the new file or leave it empty. Only for advisory files (provenance
    records), whose loss costs one refresh after a restart and nothing else."""
    if not data:  # (1)
        raise WriteError(f"refusing to write an empty file to {path}")
    directory = path.parent
    try:
        dir_fd = _open_directory(directory, root)  # (2)
    except OSError as exc:
        raise WriteError(f"cannot open directory {directory}: {_describe(exc)}") from None
    tmp = temp_name(path.name)
    created = False
    try:
        try:  # (3)
            st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                raise WriteError(f"{path} is a directory; not replacing it with a token file")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)  # (4)
        created = True
        try:
            view = memoryview(data)  # (5)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if uid is not None or gid is not None:  # (6)
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            # After fchown: chown clears set-id bits, and the mode is the operator's to choose.
            os.fchmod(fd, mode)
            if durable:  # (7)
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # (8)
        created = False
        try:
            if durable:  # (9)
                os.fsync(dir_fd)
        except OSError as exc:
            # The file is already replaced; a filesystem that cannot fsync a directory is no
            # reason to report a failure (and refetch a token) every time.
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                raise
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {_describe(exc)}") from None
    finally:
        if created:  # (10)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
        os.close(dir_fd)


DIR_MODE = 0o750
"""Mode of every directory entra-tokend creates (output_dir and token subdirectories)."""


def make_directories(directory: Path, root: Path, mode: int = DIR_MODE) -> None:
    """Create ``directory`` (inside ``root``, which must exist) and its missing parents.

    Each component is opened with ``O_NOFOLLOW`` relative to its parent's fd, so a symlink a
    neighbour planted (``out/sub -> /elsewhere``) is refused, never followed. A directory
    created here gets exactly ``mode`` (``fchmod`` after ``mkdir``: the umask does not
    apply); existing directories are left as they are. Raises OSError (ELOOP for a symlink,
    ENOTDIR for a file in the way).
    """
    parts = directory.relative_to(root).parts
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            try:
                os.mkdir(part, mode, dir_fd=fd)
                created = True
            except FileExistsError:
                created = False
            child = _open_child(fd, part)  # on failure the finally below closes fd
            os.close(fd)
            fd = child
            if created:
                os.fchmod(fd, mode)
            else:
                _check_not_foreign(fd, part)
    finally:
        os.close(fd)


def _check_not_foreign(fd: int, name: str) -> None:
    """Refuse a subdirectory another user owns and others may write: whoever created it there
    could swap the token files inside it after they are written."""
    st = os.fstat(fd)
    if st.st_uid not in (os.getuid(), 0) and st.st_mode & 0o022:
        raise OSError(
            errno.EPERM,
            f"{name} is owned by uid {st.st_uid} and writable by others; a neighbour could "
            "swap token files in it (remove it, or use another path)",
        )


def make_root(root: Path, mode: int = DIR_MODE) -> None:
    """Create output_dir and missing parents, each new one with exactly ``mode``."""
    missing: list[Path] = []
    current = root
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            continue
        os.chmod(path, mode, follow_symlinks=False)


def remove_stale_temp_files(directory: Path, root: Path | None = None) -> list[str]:
    """Remove temp files a killed run left in ``directory``: ours by name, regular, our uid.

    Below ``root`` no path component may be a symlink (see ``write_atomic``). Call it only
    while holding the directory's lock: another live writer's temp files look exactly like
    stale ones.
    """
    removed: list[str] = []
    try:
        dir_fd = _open_directory(directory, root)
    except (OSError, WriteError):
        return removed
    try:
        uid = os.getuid()
        for name in os.listdir(dir_fd):
            if not is_temp_name(name):
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                # A symlink, a directory or another user's file with our name is not ours.
                if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
                    os.unlink(name, dir_fd=dir_fd)
                    removed.append(name)
            except OSError:
                continue
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return sorted(removed)
