"""Reading small files that someone else may have planted: never block, never read too much.

``open()`` on a FIFO blocks until a writer appears — inside the event loop that stalls every
token, /healthz and even SIGTERM handling. ``read_regular`` opens with ``O_NONBLOCK`` and
refuses anything that is not a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotRegularFile(OSError):
    """The path is a FIFO, device, socket or directory."""


def read_regular(path: Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """At most ``limit`` + 1 bytes of the regular file at ``path`` (one more than ``limit``
    tells the caller it is too large). Raises OSError (``NotRegularFile`` for a FIFO, device,
    socket or directory; ELOOP for a symlink when ``follow_symlinks`` is false)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
