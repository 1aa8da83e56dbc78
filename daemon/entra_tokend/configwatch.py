"""A configuration file replaced on disk is reloaded as if SIGHUP had been sent.

In a pod the configuration is a ConfigMap volume, and nothing there sends SIGHUP: kubelet
publishes an edit by swapping the volume's ``..data`` symlink (the projected-volume sequence
the credential source already follows, see ``watcher``). ``ConfigWatch`` watches the file's
directory the same way (inotify plus the slow poll) and, when the file's *content* changed,
calls the daemon's reload — which applies the SIGHUP rules: a rejected configuration is logged
and the running one kept; ``output_dir``, ``listen`` and ``[endpoint]`` still need a restart.

Only the configuration file itself is watched: a ``template_file`` or ``secret_file`` edited on
its own is read at the next reload (SIGHUP, or the next change of the configuration file).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

from entra_tokend.logging import get_logger
from entra_tokend.util.files import read_regular
from entra_tokend.watcher import DirectoryWatcher

MAX_CONFIG_BYTES = 1024 * 1024
"""Read at most this much to fingerprint the file (the loader refuses larger ones anyway)."""


def _digest(path: Path) -> str | None:
    """The SHA-256 of the file's content, or None while it cannot be read (mid-swap)."""
    try:
        return hashlib.sha256(read_regular(path, MAX_CONFIG_BYTES)).hexdigest()
    except OSError:
        return None


class ConfigWatch:
    """Calls ``reload`` when the content of the configuration file at ``path`` changes."""

    def __init__(
        self,
        path: Path,
        reload: Callable[[], None],
        *,
        loop: asyncio.AbstractEventLoop,
        poll_interval: float,
    ) -> None:
        self._path = path
        self._reload = reload
        self._digest = _digest(path)
        self._watcher = DirectoryWatcher(
            path, self._changed, loop=loop, poll_interval=poll_interval
        )

    def start(self) -> None:
        """Begin watching (never raises for a missing file: waits for it)."""
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        self._watcher.stop()

    def _changed(self) -> None:
        digest = _digest(self._path)
        # Unreadable: a swap in progress or a deleted file; the next event brings what follows.
        # Same content: a touch or kubelet re-publishing an unchanged ConfigMap.
        if digest is None or digest == self._digest:
            return
        self._digest = digest
        get_logger().info("configuration file changed; reloading", path=str(self._path))
        self._reload()
