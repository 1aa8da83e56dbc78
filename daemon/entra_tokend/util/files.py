"""Reading small files that someone else may have planted: never block, never read too much.

``open()`` on a FIFO blocks until a writer appears — inside the event loop that stalls every
token, /healthz and even SIGTERM handling — and a multi-gigabyte file read whole exhausts memory.
``read_bounded`` opens with ``O_NONBLOCK``, checks the open file with ``fstat`` *before* reading
(type, size; the caller gets the ``stat_result`` for ownership and mode) and reads at most
``limit`` + 1 bytes, whatever the file claims.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path


class NotRegularFile(OSError):
    """The path is a FIFO, device, socket or directory (``is_directory`` tells which)."""

    def __init__(self, path: Path, mode: int) -> None:
        self.is_directory = stat.S_ISDIR(mode)
        why = "is a directory" if self.is_directory else "not a regular file"
        super().__init__(errno.EINVAL, why, str(path))


class FileTooLarge(OSError):
    """The file holds more than the caller's limit (bytes); ``strerror`` says how many."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(errno.EFBIG, f"larger than {limit} bytes", str(path))


def read_bounded(
    path: Path,
    limit: int,
    *,
    follow_symlinks: bool = True,
    check: Callable[[os.stat_result], None] | None = None,
) -> tuple[bytes, os.stat_result]:
    """The content (at most ``limit`` bytes) of the regular file at ``path`` and its ``fstat``.

    Symlinks are followed (kubelet's ``..data`` layout of Secret and projected volumes is
    two of them) unless ``follow_symlinks`` is false. Raises OSError: ``NotRegularFile`` for a
    FIFO, device, socket or directory, ``FileTooLarge`` when ``fstat`` reports more than
    ``limit`` bytes or more arrive (a file growing, a procfs file reporting size 0), ELOOP for
    a symlink when ``follow_symlinks`` is false. ``check`` sees the ``fstat`` result before
    anything is read and may raise (an OSError) to refuse the file, e.g. for its owner or mode.
    Nothing is read before the checks pass.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, st.st_mode)
        if st.st_size > limit:
            raise FileTooLarge(path, limit)
        if check is not None:
            check(st)
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileTooLarge(path, limit)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """``read_bounded``'s content only (same checks, same errors)."""
    return read_bounded(path, limit, follow_symlinks=follow_symlinks)[0]
