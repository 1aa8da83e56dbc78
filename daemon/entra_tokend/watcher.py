"""Noticing projected-token rotations: an inotify watch on the token's directory plus a slow poll.

kubelet never rewrites the token file in place. Its AtomicWriter publishes a new timestamped
directory, renames a ``..data_tmp`` symlink over ``..data`` and removes the old directory; the
user-visible name stays a symlink ``NAME -> ..data/NAME`` throughout. A watch on ``NAME`` (or on
the file it resolves to) sees none of that, so ``DirectoryWatcher`` watches the directory that
holds ``NAME`` and decides, as soon as the loop runs, whether what ``NAME`` resolves to changed.

How a change is recognised, cheaply and without reading the token:

1. watchdog's thread sees any create/delete/move/modify/close-after-write in the directory and
   only posts a note to the event loop (``loop.call_soon_threadsafe``).
2. The first note of a burst schedules a check on the loop after ``debounce`` seconds (2 ms by
   default: kubelet's swap of ``..data`` is one atomic rename, so there is no half-written state
   to wait out — the few milliseconds only gather one writer's burst of events, so that one
   change makes one callback); notes arriving before the check runs join it. A rename into the
   directory (kubelet's final ``..data`` swap, or ``mv`` of a whole file) is the publish step
   itself: it brings the check forward to the next loop iteration instead of waiting.
3. When the check runs, the directory watch is re-established if the directory was removed,
   replaced or has only just appeared, and a signature of the file is taken: its resolved path
   and ``stat`` (device, inode, size, mtime, ctime), following symlinks.
4. The callback runs once if the signature changed, or if an event named the file itself (an
   in-place rewrite can keep size and mtime within one timestamp tick).

A poll every ``poll_interval`` repeats steps 3-4 for filesystems where inotify is silent (NFS,
some CSI drivers) and for changes no directory watch can see (a mount over the directory). Its
signature check makes an idle poll cost one ``stat``. While the file cannot be watched
directly — its directory does not exist yet, inotify is off or unavailable — the poll runs every
``FAST_POLL_INTERVAL`` instead, so a token that appears is picked up within that time.

The callback only says "the token may have changed": the daemon compares content fingerprints.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver, ObservedWatch

__all__ = ["FAST_POLL_INTERVAL", "DirectoryWatcher"]

log = structlog.get_logger("entra_tokend.watcher")

# While the file has no working directory watch, poll this often: the token must be picked up
# within a second of appearing.
FAST_POLL_INTERVAL = 0.5

# Only events that can change what the path resolves to. Leaving out opened/closed-without-write
# keeps the daemon's own reads of the token from waking the watcher.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileModifiedEvent,
    FileClosedEvent,
]

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


def _new_inotify_observer() -> BaseObserver | None:
    """An inotify observer, or None where inotify cannot be used (not Linux, no instances left)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Imported here, not at module level: only this backend is ever needed, and a daemon
        # told to poll never pays for it.
        from watchdog.observers.inotify import InotifyObserver  # noqa: PLC0415

        return InotifyObserver()
    except (ImportError, OSError) as exc:
        log.warning(
            "inotify unavailable; falling back to polling the token file",
            error=f"{type(exc).__name__}: {exc}",
        )
        return None


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: classifies an event and posts it to the loop, nothing more."""

    def __init__(
        self,
        post: Callable[[int, bool, bool, bool], None],
        loop: asyncio.AbstractEventLoop,
        generation: int,
        watched: str,
        filename: str,
    ) -> None:
        self._post = post
        self._loop = loop
        self._generation = generation
        self._watched = watched
        self._filename = filename

    def _names_file(self, path: bytes | str) -> bool:
        text = os.fsdecode(path)
        return os.path.dirname(text) == self._watched and os.path.basename(text) == self._filename

    def dispatch(self, event: FileSystemEvent) -> None:
        """Post (generation, names the file, watched directory deleted, a rename) to the
        loop."""
        touched = self._names_file(event.src_path) or (
            bool(event.dest_path) and self._names_file(event.dest_path)
        )
        self_deleted = (
            event.is_directory
            and event.event_type == "deleted"
            and os.fsdecode(event.src_path) == self._watched
        )
        # The loop may already be closed while watchdog drains its last events.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(
                self._post, self._generation, touched, self_deleted, event.event_type == "moved"
            )


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
        self._callback = callback
        self._loop = loop
        self._poll_interval = poll_interval
        self._debounce = debounce
        self._use_inotify = use_inotify

        self._observer: BaseObserver | None = None
        self._watch: ObservedWatch | None = None
        self._watched: Path | None = None
        self._watched_identity: tuple[int, int] | None = None
        self._watch_dead = False
        # Events from a watch that has since been replaced are recognised by this number.
        self._generation = 0
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
        """True when an inotify observer is running (false when polling only)."""
        return self._observer is not None

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
            self._observer = _new_inotify_observer()
            if self._observer is not None:
                self._observer.start()
        # A change between the signature above and the watch taking hold is caught here.
        self._check()

    def stop(self) -> None:
        """Stop watching and polling; joins watchdog's threads. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for handle in (self._flush_handle, self._poll_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._poll_handle = None
        observer, self._observer = self._observer, None
        self._watch = None
        if observer is not None:
            observer.stop()
            if observer.is_alive():
                observer.join()

    # -- loop side -------------------------------------------------------------------------

    def _on_event(self, generation: int, touched: bool, self_deleted: bool, moved: bool) -> None:
        if self._stopped or generation != self._generation:
            return
        if self_deleted:
            self._watch_dead = True
        if touched:
            self._touched = True
        if moved:
            # The publish step: nothing is left half-written, so check at once (the events
            # after it, e.g. kubelet removing the old directory, find the signature unchanged).
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = self._loop.call_soon(self._flush)
        elif self._flush_handle is None:
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
        if self._observer is None:
            self._set_state("polling", str(self._dir))
            return
        target = _nearest_existing_dir(self._dir)
        identity = _identity(target)
        if (
            self._watch is not None
            and not self._watch_dead
            and target == self._watched
            and identity == self._watched_identity
        ):
            return
        self._unwatch()
        # inotify would watch a symlink itself rather than the directory it names.
        real = os.path.realpath(target)
        self._generation += 1
        handler = _Handler(self._on_event, self._loop, self._generation, real, self._path.name)
        try:
            self._watch = self._observer.schedule(handler, real, event_filter=_EVENT_FILTER)
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
        watch, self._watch = self._watch, None
        self._watched = None
        self._watched_identity = None
        if watch is not None and self._observer is not None:
            # The emitter may already have stopped itself (its directory was deleted).
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(watch)

    def _arm_poll(self) -> None:
        if self._observer is None:
            # Polling only: a present file only needs the slow poll, a missing one a fast one.
            fast = self._signature is None
        else:
            fast = self._watch is None or self._watched != self._dir
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
