"""Outputs: how an issued token becomes bytes in a file.

A format is a ``Renderer``: ``AccessToken -> bytes``, one small module per format (``raw``,
``jsondoc``). ``renderer_for`` picks it from a token's ``OutputSpec``; ``FileOutput`` hands the
bytes to the atomic writer (``writer``). The runner sees only the ``Output`` protocol, so an
output that is not a file (the local token endpoint's cache) plugs in the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from entra_tokend.model import AccessToken, OutputSpec
from entra_tokend.outputs import jsondoc, raw
from entra_tokend.outputs.writer import ExistingToken, WriteError, read_existing, write_atomic

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

    def existing(self) -> ExistingToken | None:
        """A token delivered by an earlier run that may be adopted, or None."""
        ...


class FileOutput:
    """A token file inside ``root`` (the output_dir), written atomically off the event loop."""

    def __init__(self, spec: OutputSpec, root: Path) -> None:
        self.spec = spec
        self.root = root
        self._render = renderer_for(spec)

    async def deliver(self, token: AccessToken) -> None:
        """Render and atomically replace the file. Raises ``WriteError``."""
        data = self._render(token)
        spec = self.spec
        await asyncio.to_thread(
            write_atomic,
            spec.path,
            data,
            spec.file_mode,
            spec.file_owner,
            spec.file_group,
            root=self.root,
        )

    def existing(self) -> ExistingToken | None:
        """The expiry of a file an earlier run wrote, when it can be read."""
        return read_existing(self.spec.path, self.spec.format)


__all__ = [
    "FORMATS",
    "ExistingToken",
    "FileOutput",
    "Output",
    "Renderer",
    "WriteError",
    "renderer_for",
]
