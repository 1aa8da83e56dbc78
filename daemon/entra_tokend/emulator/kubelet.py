"""Kubelet's projected-volume write sequence, reproduced for the emulator and the tests.

kubelet's AtomicWriter publishes a projected volume's files in these steps, and
``ProjectedVolume.write`` performs the same ones in the same order:

1. Create a new timestamped directory ``..YYYY_MM_DD_HH_MM_SS.<random>`` next to the others.
2. Write every file into it and set its mode.
3. Create a symlink ``..data_tmp`` pointing at the new directory's name.
4. Rename ``..data_tmp`` over ``..data`` (one atomic rename swaps every file at once).
5. Create the user-visible symlinks ``NAME -> ..data/NAME`` if they are missing.
6. Remove the previous timestamped directory.

The invariant readers rely on: ``NAME`` always resolves to a complete file, old or new.
A watch on ``NAME`` itself sees none of this; only a watch on the directory does.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

DATA_DIR = "..data"
DATA_TMP = "..data_tmp"
DEFAULT_FILENAME = "azure-identity-token"


class ProjectedVolume:
    """A directory laid out and updated exactly as kubelet updates a projected volume."""

    def __init__(
        self, directory: Path, filename: str = DEFAULT_FILENAME, mode: int = 0o644
    ) -> None:
        self.directory = directory
        self.filename = filename
        self.mode = mode

    @property
    def path(self) -> Path:
        """The user-visible path (a symlink into ``..data/``) that consumers are given."""
        return self.directory / self.filename

    def write(self, content: str | bytes) -> None:
        """Publish ``content`` as the file's new version with kubelet's six steps."""
        data = content.encode() if isinstance(content, str) else content
        self.directory.mkdir(parents=True, exist_ok=True)
        old_target = self._current_target()
        # 1. new timestamped directory
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        ts_name = f"..{stamp}.{secrets.randbelow(10**9):09d}"
        ts_dir = self.directory / ts_name
        ts_dir.mkdir(mode=0o755)
        # 2. write the payload
        payload = ts_dir / self.filename
        with open(payload, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(payload, self.mode)
        # 3. ..data_tmp -> new directory
        tmp_link = self.directory / DATA_TMP
        if tmp_link.is_symlink():
            tmp_link.unlink()
        os.symlink(ts_name, tmp_link)
        # 4. atomic swap of ..data
        os.replace(tmp_link, self.directory / DATA_DIR)
        # 5. user-visible symlink
        if not self.path.is_symlink():
            os.symlink(f"{DATA_DIR}/{self.filename}", self.path)
        # 6. remove the old directory
        if old_target and old_target != ts_name:
            shutil.rmtree(self.directory / old_target, ignore_errors=True)

    def _current_target(self) -> str | None:
        link = self.directory / DATA_DIR
        if link.is_symlink():
            return os.readlink(link)
        return None
