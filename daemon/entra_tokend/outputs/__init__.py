"""Outputs: how an issued token becomes bytes in a file.

A format is a ``Renderer``: ``AccessToken -> bytes``, one small module per format (``raw``,
``jsondoc``). ``renderer_for`` picks it from a token's ``OutputSpec``; ``FileOutput`` hands the
bytes to the atomic writer (``writer``). The runner sees only the ``Output`` protocol, so an
output that is not a file (the local token endpoint's cache) plugs in the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from entra_tokend.model import AccessToken, OutputSpec
from entra_tokend.outputs import jsondoc, raw
from entra_tokend.outputs.provenance import ExistingToken, ProvenanceStore
from entra_tokend.outputs.writer import WriteError, write_atomic

Renderer = Callable[[AccessToken], bytes]
"""Turns an issued token into a file's complete contents."""

FORMATS: dict[str, Renderer] = {"raw": raw.render, "json": jsondoc.render}
"""Every format name a ``[token.NAME] format`` may use, and its renderer."""


def renderer_for(spec: OutputSpec) -> Renderer:
    """The renderer of ``spec.format``. Raises KeyError for an unknown format (config rejects
    those at load time)."""
    return FORMATS[spec.format]


class Output(Protocol):
    """Where a runner delivers its tokens."""

    async def deliver(self, token: AccessToken) -> None:
        """Make ``token`` available to its consumer. Raises ``WriteError`` on failure, leaving
        what was delivered before untouched."""
        ...

    def adoptable(self, now: float) -> ExistingToken | str | None:
        """A token an earlier run delivered that may be served until it is due (``now`` is
        unix time), why such a token is not adoptable (str), or None when there is none."""
        ...


class FileOutput:
    """A token file inside ``root`` (the output_dir), written atomically off the event loop,
    with a provenance record so that a restart adopts it only if it is provably this token's.

    ``name`` is the token's name; ``print_`` the configuration fingerprint
    (``provenance.fingerprint``); ``store`` the output_dir's ``ProvenanceStore``.
    """

    def __init__(
        self, spec: OutputSpec, root: Path, *, name: str, print_: str, store: ProvenanceStore
    ) -> None:
        self.spec = spec
        self.root = root
        self._render = renderer_for(spec)
        self._name = name
        self._print = print_
        self._store = store

    async def deliver(self, token: AccessToken) -> None:
        """Render and atomically replace the file, then record its provenance. Raises
        ``WriteError`` when the file could not be replaced."""
        data = self._render(token)
        await asyncio.to_thread(self._write, data, token)

    def _write(self, data: bytes, token: AccessToken) -> None:
        spec = self.spec
        write_atomic(
            spec.path, data, spec.file_mode, spec.file_owner, spec.file_group, root=self.root
        )
        with contextlib.suppress(OSError, WriteError):
            # Without a record the file is simply not adopted after a restart (one refresh).
            self._store.record(self._name, self._print, data, token)

    def adoptable(self, now: float) -> ExistingToken | str | None:
        """The file an earlier run wrote, if its provenance checks out (see ``provenance``)."""
        if not os.path.lexists(self.spec.path):
            return None
        owners = {os.getuid()} | (
            {self.spec.file_owner} if self.spec.file_owner is not None else set()
        )
        return self._store.adoptable(self._name, self._print, self.spec.path, owners, now)


__all__ = [
    "FORMATS",
    "ExistingToken",
    "FileOutput",
    "Output",
    "ProvenanceStore",
    "Renderer",
    "WriteError",
    "renderer_for",
]
