"""Noticing token files another writer deleted or replaced: the mechanism of ``watcher`` (one
inotify instance read by the event loop, plus a slow poll) pointed at the token files'
directories.

A neighbour in the volume's group (a world-writable ``emptyDir`` without the sticky bit), an
operator's ``rm`` or a consumer that writes its own file over ours makes the file on disk differ
from what readiness reports. ``OutputWatch`` tells each token's runner when something happened
to its file's name, and the runner asks its output whether what it delivered is still there
(``FileOutput.check``: one ``lstat`` when nothing changed) and puts it back if not.

1. One inotify instance for every token (``watcher._Inotify``: non-blocking, close-on-exec,
   read by ``loop.add_reader``; a watch per token directory, not per file: inotify instances
   are few per user, watches many).
2. An event naming a watched file (created, deleted, moved in or away, written) marks it; the
   marked files' callbacks run together ``debounce`` seconds later (the daemon's own rename
   marks its file too: the check then finds its own bytes and does nothing).
3. A directory removed or moved away (or an overflowed event queue) marks every file below it.
   It is watched again as soon as an event of a watched directory names it (the runner making
   it again beside other token files), else at the next poll: every ``poll_interval`` every
   file is called back and every directory not watched is tried again. Without inotify the
   poll is all there is.

The callback only says "the file may have changed"; what changed is the output's business.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from entra_tokend.watcher import _GONE, IN_Q_OVERFLOW, _Inotify

__all__ = ["OutputWatch"]

log = structlog.get_logger("entra_tokend.outputwatch")

Callback = Callable[[], None]


class OutputWatch:
    """Calls a token file's callback when its name is touched in its directory, and every
    ``poll_interval`` seconds. Used on ``loop``'s thread only."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, poll_interval: float, *, debounce: float = 0.002
    ) -> None:
        self._loop = loop
        self.poll_interval = poll_interval
        self._debounce = debounce
        self._files: dict[Path, Callback] = {}
        self._watches: dict[Path, int] = {}  # directory -> watch descriptor
        self._dirs: dict[int, Path] = {}  # watch descriptor -> directory
        self._unwatched: set[Path] = set()  # wanted, but gone or not there yet
        self._marked: set[Path] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._poll_handle: asyncio.TimerHandle | None = None
        self._inotify: _Inotify | None = None
        self._started = False

    def add(self, path: Path, callback: Callback) -> None:
        """Call ``callback`` when ``path`` may have changed (replacing an earlier one)."""
        self._files[path] = callback
        if self._started:
            self._watch(path.parent)

    def remove(self, path: Path, callback: Callback) -> None:
        """Stop calling ``callback`` for ``path`` (another token's callback there stays)."""
        if self._files.get(path) == callback:
            del self._files[path]

    def start(self) -> None:
        """Open the inotify instance (or poll only, logged) and watch every directory."""
        if self._started:
            return
        self._started = True
        try:
            self._inotify = _Inotify()
        except OSError as exc:
            log.warning(
                "inotify unavailable; token files are checked every poll_interval only",
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            self._loop.add_reader(self._inotify.fd, self._on_readable)
        for path in list(self._files):
            self._watch(path.parent)
        self._arm_poll()

    def stop(self) -> None:
        """Stop watching and polling (idempotent)."""
        for handle in (self._flush_handle, self._poll_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._poll_handle = None
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            self._loop.remove_reader(inotify.fd)
            inotify.close()
        self._watches.clear()
        self._dirs.clear()
        self._unwatched.clear()

    def check_all(self) -> None:
        """Call every callback now (the poll; SIGHUP)."""
        for callback in list(self._files.values()):
            _call(callback)

    def _watch(self, directory: Path) -> None:
        if self._inotify is None or directory in self._watches:
            return
        try:
            wd = self._inotify.add_watch(str(directory))
        except OSError:
            self._unwatched.add(directory)  # not there (yet) or no watches left
            return
        self._unwatched.discard(directory)
        self._watches[directory] = wd
        self._dirs[wd] = directory

    def _on_readable(self) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        try:
            events = list(inotify.read())
        except OSError:
            events = [(-1, IN_Q_OVERFLOW, b"")]  # never spin on a broken descriptor
        for wd, mask, name in events:
            directory = self._dirs.get(wd)
            if mask & IN_Q_OVERFLOW:
                self._marked.update(self._files)
            elif directory is None:
                continue
            elif mask & _GONE:
                del self._dirs[wd]
                self._watches.pop(directory, None)
                self._unwatched.add(directory)
                self._marked.update(p for p in self._files if p.parent == directory)
            else:
                path = directory / os.fsdecode(name)
                if path in self._files:
                    self._marked.add(path)
                elif path in self._unwatched:  # a token directory made again
                    self._watch(path)
                    self._marked.update(p for p in self._files if p.parent == path)
        if self._marked and self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self._debounce, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        marked, self._marked = self._marked, set()
        for path in marked:
            callback = self._files.get(path)
            if callback is not None:
                _call(callback)

    def _poll(self) -> None:
        self._poll_handle = None
        for path in list(self._files):
            self._watch(path.parent)
        self.check_all()
        self._arm_poll()

    def _arm_poll(self) -> None:
        self._poll_handle = self._loop.call_later(self.poll_interval, self._poll)


def _call(callback: Callback) -> None:
    try:
        callback()
    except Exception:
        # One token's failing check must not stop the others' (nor the watch).
        log.exception("token file check failed")
