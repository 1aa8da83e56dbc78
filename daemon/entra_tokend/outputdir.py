"""The output directory's lifecycle: create it, take its lock, prepare the provenance store,
create token subdirectories and clean what an interrupted run left.

Order matters and is kept here: the lock is taken before any cleaning, because a live writer's
temp files look exactly like stale ones. A world-writable directory without the sticky bit
(Kubernetes' default disk-backed emptyDir with fsGroup: mode 2777) is accepted with a warning and
``entra_tokend_output_dir_world_writable 1``: every write stays safe (O_EXCL temp files, nothing
followed, rename); a neighbour can delete or replace a token file, which its runner puts back at
once (``outputwatch``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from entra_tokend.lock import DirectoryLock
from entra_tokend.logging import get_logger
from entra_tokend.metrics import Metrics
from entra_tokend.outputs import ProvenanceStore
from entra_tokend.outputs.writer import make_directories, make_root, remove_stale_temp_files
from entra_tokend.preflight import world_writable


class OutputDirectory:
    """One output_dir, held by this process while it runs."""

    def __init__(self, root: Path, metrics: Metrics, *, allow_world_writable: bool) -> None:
        self.root = root
        self.provenance = ProvenanceStore(root)
        self._metrics = metrics
        self._allow_world_writable = allow_world_writable
        self._lock: DirectoryLock | None = None
        self._log = get_logger()

    def acquire(self, token_dirs: Iterable[Path]) -> None:
        """Create, lock and clean the directory. Raises LockHeld/LockError (another daemon) or
        OSError (cannot create or open it); on failure nothing is held."""
        try:
            make_root(self.root)
            self._check_mode()
            self._lock = DirectoryLock.acquire(self.root)
            if not self.provenance.prepare():
                self._log.warning(
                    "provenance records disabled: the state directory is not this daemon's "
                    "own; no token file will be adopted after a restart (remove it)",
                    path=str(self.provenance.directory),
                )
            remove_stale_temp_files(self.provenance.directory, self.root)
            self.make_token_dirs(token_dirs, clean=True)
        except OSError:
            self.release()
            raise

    def make_token_dirs(self, directories: Iterable[Path], *, clean: bool) -> None:
        """Create each token subdirectory (0750, never through a symlink); with ``clean``,
        remove our stale temp files there. A failure is logged, not raised: the tokens below
        it fail with write_error (and say why) while the others are served."""
        for directory in set(directories):
            try:
                make_directories(directory, self.root)
            except OSError as exc:
                self._log.error(
                    "cannot create token directory", path=str(directory), detail=exc.strerror
                )
                continue
            if clean:
                removed = remove_stale_temp_files(directory, self.root)
                if removed:
                    self._log.info("removed temp files of an interrupted run", files=removed)

    def _check_mode(self) -> None:
        mode = os.stat(self.root).st_mode
        warning = world_writable(mode)  # the host checks' rule and words
        self._metrics.set_output_dir_world_writable(warning is not None)
        if warning is not None and not self._allow_world_writable:
            self._log.warning(warning, path=str(self.root), mode=f"{stat.S_IMODE(mode):04o}")

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
