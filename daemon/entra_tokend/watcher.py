"""Noticing projected-token rotations: an inotify watch on the token's directory plus a slow poll.

kubelet never rewrites the token file in place. Its AtomicWriter publishes a new timestamped
directory, renames a ``..data_tmp`` symlink over ``..data`` and removes the old directory; the
user-visible name stays a symlink ``NAME -> ..data/NAME`` throughout. A watch on ``NAME`` (or on
the file it resolves to) sees none of that, so ``DirectoryWatcher`` watches the directory that
holds ``NAME`` and decides, on the event loop, whether what ``NAME`` resolves to changed.

How a change is recognised, cheaply and without reading the token:

1. The watcher's inotify instance (``inotify_init1``, ``inotify_add_watch``,
   ``inotify_rm_watch`` through ctypes; constants from ``<sys/inotify.h>``) is non-blocking and
   read by the event loop itself (``loop.add_reader``): no thread, no hand-off between threads,
   and a read that finds nothing returns at once. On a busy machine every hand-off between
   threads is a chance to be scheduled late.
2. Any create/delete/move/modify/attribute change/close-after-write in the directory schedules a
   check on the loop after ``debounce`` seconds (2 ms by default: kubelet's swap of ``..data``
   is one atomic rename, so there is no half-written state to wait out — the few milliseconds
   only gather one writer's burst of events, so that one change makes one callback); events
   arriving before the check runs join it. A rename into the directory (kubelet's final
   ``..data`` swap, or ``mv`` of a whole file) is the publish step itself: it is checked at once,
   in the same loop callback that read it.
3. When the check runs, the directory watch is re-established if the directory was removed,
   moved away, replaced or has only just appeared, and a signature of the file is taken: its
   resolved path and ``stat`` (device, inode, size, mtime, ctime), following symlinks.
4. The callback runs once if the signature changed, or if an event named the file itself (an
   in-place rewrite can keep size and mtime within one timestamp tick), or if the kernel's
   event queue overflowed (events were lost).

A poll every ``poll_interval`` repeats steps 3-4 for filesystems where inotify is silent (NFS,
some CSI drivers) and for changes no directory watch can see (a mount over the directory). Its
signature check makes an idle poll cost one ``stat``. While the file cannot be watched
directly — its directory does not exist yet, inotify is off or unavailable, no inotify watches
are left — the poll runs every ``FAST_POLL_INTERVAL`` instead, so a token that appears is picked
up within that time.

The callback only says "the token may have changed": the daemon compares content fingerprints.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import structlog

__all__ = ["FAST_POLL_INTERVAL", "DirectoryWatcher"]

log = structlog.get_logger("entra_tokend.watcher")

# While the file has no working directory watch, poll this often: the token must be picked up
# within a second of appearing.
FAST_POLL_INTERVAL = 0.5

# One read takes whatever the kernel has queued, up to this much (an event is 16 bytes plus
# its name, at most NAME_MAX + 1): kubelet's whole rotation is a handful of events.
_READ_SIZE = 64 * 1024

# struct inotify_event (inotify(7)): int wd; uint32_t mask, cookie, len; char name[len].
_EVENT_HEADER = struct.Struct("iIII")

# Event bits and flags of <sys/inotify.h> (the Linux ABI; identical on every architecture).
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000

# Only events that can change what the path resolves to. Leaving out open/access/
# close-without-write keeps the daemon's own reads of the token from waking it.
_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_MODIFY | IN_ATTRIB
_MASK |= IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW
# The watched directory itself was deleted, moved away or unmounted; IN_IGNORED: the kernel
# dropped the watch.
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED

# (resolved path, st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)
_Signature = tuple[str, int, int, int, int, int]


def _signature(path: Path) -> _Signature | None:
    """What ``path`` resolves to now, or None when it does not resolve to a file."""
    try:
        st = os.stat(path)
        # The resolved path distinguishes kubelet generations even if an inode number and
        # timestamp are reused.
        real = os.path.realpath(path)
    except OSError:
        return None
    return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _nearest_existing_dir(directory: Path) -> Path:
    for candidate in (directory, *directory.parents):
        if candidate.is_dir():
            return candidate
    return Path(directory.anchor or "/")


def _raise_errno(what: str) -> NoReturn:
    """Raise OSError for the errno a failed libc call left."""
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


class _Libc:
    """The three inotify system calls of the C library, typed."""

    def __init__(self) -> None:
        """Raises OSError when this C library has no inotify (not Linux)."""
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            self.init1 = libc.inotify_init1
            self.add_watch = libc.inotify_add_watch
            self.rm_watch = libc.inotify_rm_watch
        except AttributeError as exc:
            raise OSError(errno.ENOSYS, "this C library has no inotify") from exc
        self.init1.argtypes = [ctypes.c_int]
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        for function in (self.init1, self.add_watch, self.rm_watch):
            function.restype = ctypes.c_int


class _Inotify:
    """One non-blocking, close-on-exec inotify instance, read by the event loop."""

    __slots__ = ("_libc", "fd")

    def __init__(self) -> None:
        """Raises OSError: no inotify instances left (EMFILE), or no inotify here."""
        self._libc = _Libc()
        # IN_NONBLOCK and IN_CLOEXEC are O_NONBLOCK and O_CLOEXEC by definition; close-on-exec
        # so that hooks do not inherit the descriptor.
        fd = self._libc.init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            _raise_errno("inotify_init1")
        self.fd = fd

    def add_watch(self, directory: str) -> int:
        """Watch ``directory`` (not following a final symlink); its watch descriptor. Raises
        OSError (ENOENT, ENOTDIR, EACCES, ENOSPC when no inotify watches are left)."""
        wd: int = self._libc.add_watch(self.fd, os.fsencode(directory), _MASK)
        if wd < 0:
            _raise_errno(f"inotify_add_watch {directory}")
        return wd

    def remove_watch(self, wd: int) -> None:
        """Stop a watch; one the kernel already dropped (EINVAL) is ignored."""
        self._libc.rm_watch(self.fd, wd)

    def read(self) -> Iterator[tuple[int, int, bytes]]:
        """(wd, mask, name) of each event queued now; nothing when none is (never blocks).
        Raises OSError only for an unusable descriptor."""
        try:
            buffer = os.read(self.fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if not buffer:
            # inotify never reports end of file; a readable descriptor that reads empty would
            # call the loop back forever.
            raise OSError(errno.EIO, "inotify descriptor read empty")
        offset, end = 0, len(buffer)
        while offset + _EVENT_HEADER.size <= end:
            wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(buffer, offset)
            offset += _EVENT_HEADER.size
            yield wd, mask, buffer[offset : offset + length].rstrip(b"\0")
            offset += length

    def close(self) -> None:
        """Close the descriptor (the kernel drops every watch with it)."""
        os.close(self.fd)


def _open_inotify() -> _Inotify | None:
    """An inotify instance, or None where there is none (not Linux, no instances left)."""
    try:
        return _Inotify()
    except OSError as exc:
        log.warning(
            "inotify unavailable; falling back to polling the token file",
            error=f"{type(exc).__name__}: {exc}",
        )
        return None


class DirectoryWatcher:
    """Tells the event loop when the projected token file may have changed.

    ``callback`` runs on ``loop``'s thread. ``start`` and ``stop`` must be called from that
    thread too. ``start`` records the file's current state without calling back, so start the
    watcher before the first read of the token: no change can then fall between the two.
    """

    def __init__(
        self,
        path: Path,
        callback: Callable[[], None],
        *,
        loop: asyncio.AbstractEventLoop,
        poll_interval: float = 60.0,
        debounce: float = 0.002,
        use_inotify: bool = True,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        if debounce < 0:
            raise ValueError("debounce must not be negative")
        self._path = Path(os.path.abspath(path))
        self._dir = self._path.parent
        self._name = os.fsencode(self._path.name)
        self._callback = callback
        self._loop = loop
        self._poll_interval = poll_interval
        self._debounce = debounce
        self._use_inotify = use_inotify

        self._inotify: _Inotify | None = None
        # The current watch; events of an earlier one (still queued) are told apart by it.
        self._wd: int | None = None
        self._watched: Path | None = None
        self._watched_identity: tuple[int, int] | None = None
        self._watch_dead = False
        self._state: tuple[str, str] | None = None

        self._signature: _Signature | None = None
        self._touched = False
        self._flush_handle: asyncio.Handle | None = None
        self._poll_handle: asyncio.TimerHandle | None = None
        self._poll_scheduled_interval = 0.0
        self._started = False
        self._stopped = False
        self.poll_count = 0
        """Polls performed so far (fallback and fast); for tests and diagnostics."""

    @property
    def using_inotify(self) -> bool:
        """True while an inotify instance is open (false when polling only or stopped)."""
        return self._inotify is not None

    @property
    def path(self) -> Path:
        """The token file path being followed."""
        return self._path

    def start(self) -> None:
        """Begin watching. Never raises for a missing directory or file: waits for them."""
        if self._started:
            return
        self._started = True
        self._signature = _signature(self._path)
        if self._use_inotify:
            self._inotify = _open_inotify()
            if self._inotify is not None:
                self._loop.add_reader(self._inotify.fd, self._on_readable)
        # A change between the signature above and the watch taking hold is caught here.
        self._check()

    def stop(self) -> None:
        """Stop watching and polling; closes the inotify descriptor. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for handle in (self._flush_handle, self._poll_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._poll_handle = None
        self._close_inotify()

    # -- loop side -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """The loop's reader callback: take every queued event, then check now or soon."""
        inotify = self._inotify
        if inotify is None or self._stopped:
            return
        noted = publish = False
        try:
            for wd, mask, name in inotify.read():
                if mask & IN_Q_OVERFLOW:
                    # Events were lost: one of them may have named the file.
                    self._touched = publish = noted = True
                    continue
                if wd != self._wd:
                    continue  # from a watch already replaced
                noted = True
                if mask & _GONE:
                    self._watch_dead = True
                elif name == self._name and self._watched == self._dir:
                    self._touched = True
                if mask & IN_MOVED_TO:
                    publish = True
        except OSError as exc:
            # Not expected of an inotify descriptor; never spin on it: poll instead.
            log.warning(
                "inotify descriptor failed; polling the token file instead",
                path=str(self._path),
                error=f"{type(exc).__name__}: {exc}",
            )
            self._close_inotify()
            publish = True
        if publish:
            # The publish step: nothing is left half-written, so check at once (the events
            # after it, e.g. kubelet removing the old directory, find the signature unchanged).
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self._check()
        elif noted and self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self._debounce, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._stopped:
            self._check()

    def _poll(self) -> None:
        self._poll_handle = None
        if self._stopped:
            return
        self.poll_count += 1
        self._check()

    def _check(self) -> None:
        """Re-establish the watch if needed, call back if the file changed, re-arm the poll."""
        self._reconcile_watch()
        signature = _signature(self._path)
        touched, self._touched = self._touched, False
        changed = signature != self._signature or (touched and signature is not None)
        self._signature = signature
        self._arm_poll()
        if changed:
            try:
                self._callback()
            except Exception:
                # The watcher must outlive a failing callback; the next change calls again.
                log.exception("token watcher callback failed", path=str(self._path))

    def _reconcile_watch(self) -> None:
        """Watch the token's directory, or its nearest existing ancestor until it appears."""
        inotify = self._inotify
        if inotify is None:
            self._set_state("polling", str(self._dir))
            return
        target = _nearest_existing_dir(self._dir)
        identity = _identity(target)
        if (
            self._wd is not None
            and not self._watch_dead
            and target == self._watched
            and identity == self._watched_identity
        ):
            return
        self._unwatch()
        try:
            # inotify would watch a symlink itself rather than the directory it names.
            self._wd = inotify.add_watch(os.path.realpath(target))
        except OSError as exc:
            # Gone again, not readable, or out of inotify watches: poll fast and retry then.
            self._set_state("unwatchable", f"{target}: {type(exc).__name__}: {exc}")
            return
        self._watched = target
        self._watched_identity = identity
        self._watch_dead = False
        if target == self._dir:
            self._set_state("watching", str(target))
        else:
            self._set_state("waiting", str(target))

    def _unwatch(self) -> None:
        wd, self._wd = self._wd, None
        self._watched = None
        self._watched_identity = None
        if wd is not None and self._inotify is not None:
            self._inotify.remove_watch(wd)

    def _close_inotify(self) -> None:
        inotify, self._inotify = self._inotify, None
        self._wd = self._watched = self._watched_identity = None
        if inotify is not None:
            self._loop.remove_reader(inotify.fd)
            inotify.close()

    def _arm_poll(self) -> None:
        if self._inotify is None:
            # Polling only by choice (use_inotify=False): a present file only needs the slow
            # poll, a missing one a fast one. Inotify wanted but unavailable (no instance left:
            # max_user_instances is shared by every container of the UID on the node): the
            # fast poll, or a rotation would wait up to poll_interval.
            fast = self._signature is None or self._use_inotify
        else:
            fast = self._wd is None or self._watched != self._dir
        interval = min(self._poll_interval, FAST_POLL_INTERVAL) if fast else self._poll_interval
        if self._poll_handle is not None:
            if interval == self._poll_scheduled_interval:
                return
            self._poll_handle.cancel()
        self._poll_scheduled_interval = interval
        self._poll_handle = self._loop.call_later(interval, self._poll)

    def _set_state(self, state: str, where: str) -> None:
        """Log once per change of watching state, never once per poll."""
        if self._state == (state, where):
            return
        self._state = (state, where)
        path = str(self._path)
        if state == "watching":
            log.info("watching token directory for rotations", path=path, directory=where)
        elif state == "waiting":
            log.warning(
                "token directory does not exist yet; waiting for it to appear",
                path=path,
                watching=where,
            )
        elif state == "polling":
            log.info(
                "polling token file (inotify off or unavailable)",
                path=path,
                interval_s=self._poll_interval,
            )
        else:
            log.warning(
                "cannot watch token directory; polling it instead",
                path=path,
                reason=where,
                interval_s=min(self._poll_interval, FAST_POLL_INTERVAL),
            )
