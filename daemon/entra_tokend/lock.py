"""One writer per output directory: an exclusive ``flock`` on ``.entra-tokend.lock``.

Two daemons writing the same files would each be correct alone and wrong together (each
cleaning up the other's temp files at start, refreshing the same tokens twice). The lock file
holds the holder's pid so the loser can name it. The kernel drops the lock when the holder
dies, even by SIGKILL, so a stale file never blocks a restart.

At a clean exit the holder unlinks the file while still holding the lock. A process that
opened the old file just before the unlink could then lock an orphaned inode, so ``acquire``
checks, after locking, that the name still refers to the inode it locked, and retries if not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from entra_tokend.model import LOCK_NAME

_ATTEMPTS = 5  # unlink races are rare; a bound keeps a pathological volume from spinning us


class LockError(Exception):
    """The output directory's lock cannot be taken."""


class LockHeld(LockError):
    """Another process holds the lock; ``pid`` is the holder's pid when it could be read."""

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process whose pid is not recorded"
        super().__init__(f"{path} is held by {holder}; only one entra-tokend may write here")
        self.path = path
        self.pid = pid


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        pid = int(text)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return pid if pid > 0 else None


def _open_lock_file(path: Path, dir_fd: int, access: int) -> int:
    # O_NOFOLLOW: a symlink planted here must not make us create or lock a file elsewhere.
    flags = access | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(LOCK_NAME, flags, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(f"{path} is a symlink; remove it") from None
        raise LockError(f"cannot open {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LockError(f"{path} is not a regular file; remove it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock(path: Path, fd: int) -> bool:
    """Lock ``fd`` exclusively; False when this fd's access mode cannot take the lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockHeld(path, _read_pid(fd)) from None
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return False
        raise LockError(f"cannot lock {path}: {exc.strerror}") from None
    return True


def _write_pid(dir_fd: int, locked: os.stat_result) -> None:
    """Record our pid in the lock file we hold (opened again, briefly, for writing)."""
    fd = os.open(LOCK_NAME, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (locked.st_dev, locked.st_ino):
            raise LockError(f"{LOCK_NAME} was replaced while locking it")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    finally:
        os.close(fd)


class DirectoryLock:
    """An exclusive lock on ``directory``; hold it for the life of the daemon."""

    def __init__(self, directory: Path, dir_fd: int, fd: int) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        self._dir_fd = dir_fd
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path) -> DirectoryLock:
        """Take the lock without waiting. Raises LockHeld, or LockError naming the problem."""
        path = directory / LOCK_NAME
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise LockError(f"cannot open {directory}: {exc.strerror}") from None
        try:
            for _ in range(_ATTEMPTS):
                fd = cls._try_once(path, dir_fd)
                if fd is not None:
                    return cls(directory, dir_fd, fd)
        except BaseException:
            os.close(dir_fd)
            raise
        os.close(dir_fd)
        raise LockError(f"{path} keeps being replaced while locking it; is another writer here?")

    @staticmethod
    def _try_once(path: Path, dir_fd: int) -> int | None:
        """The locked fd, or None when the file was unlinked under us (try again)."""
        # Read-only: a file held open for writing would block remounting the volume read-only.
        # NFS emulates flock with byte-range locks, which need a writable fd: then O_RDWR.
        for access in (os.O_RDONLY, os.O_RDWR):
            fd = _open_lock_file(path, dir_fd, access)
            try:
                locked = _lock(path, fd)
            except BaseException:
                os.close(fd)
                raise
            if locked:
                break
            os.close(fd)
        else:
            raise LockError(f"cannot lock {path}: the filesystem does not support flock")
        try:
            st = os.fstat(fd)
            try:
                now = os.stat(LOCK_NAME, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                return None
            _write_pid(dir_fd, st)
        except OSError as exc:
            os.close(fd)
            raise LockError(f"cannot write {path}: {exc.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self) -> None:
        """Remove the lock file (while still holding it) and drop the lock. Idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            # Only unlink the name if it is still our file, never someone's replacement.
            now = os.stat(LOCK_NAME, dir_fd=self._dir_fd, follow_symlinks=False)
            mine = os.fstat(fd)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(LOCK_NAME, dir_fd=self._dir_fd)
        os.close(fd)
        os.close(self._dir_fd)
