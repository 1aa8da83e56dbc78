"""Outputs: how an issued token becomes bytes in a file.

A format is a ``Renderer``: ``AccessToken -> bytes``, one small module per format (``raw``,
``jsondoc``, ``header``, ``envfile``, ``template``, ``dockerconfig``). ``renderer_for`` builds
it from a token's ``OutputSpec`` (formats with settings — variable names, a template — read
them there); ``FileOutput`` hands the bytes to the atomic writer (``writer``). The runner
sees only the ``Output`` protocol, so an output that is not a file (the local token endpoint's
cache) plugs in the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from entra_tokend.model import AccessToken, OutputSpec
from entra_tokend.outputs import dockerconfig, envfile, header, jsondoc, raw, template
from entra_tokend.outputs.writer import (
    ExistingToken,
    WriteError,
    read_existing,
    read_regular,
    write_atomic,
)

Renderer = Callable[[AccessToken], bytes]
"""Turns an issued token into a file's complete contents."""


@dataclass(frozen=True)
class Format:
    """One output format: ``make`` builds its renderer from an ``OutputSpec``; ``existing``
    reads the expiry of a file an earlier run wrote (None: such files are never adopted, the
    token is refreshed at start)."""

    make: Callable[[OutputSpec], Renderer]
    existing: Callable[[bytes, OutputSpec], ExistingToken | None] | None = None


def _fixed(render: Renderer) -> Callable[[OutputSpec], Renderer]:
    return lambda _spec: render


FORMATS: dict[str, Format] = {
    "raw": Format(_fixed(raw.render)),
    "json": Format(_fixed(jsondoc.render)),
    "header": Format(_fixed(header.render), lambda data, _spec: header.existing(data)),
    "env": Format(envfile.renderer, envfile.existing),
    "template": Format(template.renderer),
    "docker-config": Format(_fixed(dockerconfig.render), dockerconfig.existing),
}
"""Every format name a ``[token.NAME] format`` may use."""


def renderer_for(spec: OutputSpec) -> Renderer:
    """The renderer of ``spec.format`` with ``spec``'s settings. Raises KeyError for an
    unknown format (config rejects those at load time)."""
    return FORMATS[spec.format].make(spec)


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
        """Render and atomically replace the file. Raises ``WriteError`` (also for a token
        the format cannot hold, e.g. an ``env`` value that would need quoting)."""
        try:
            data = self._render(token)
        except envfile.UnsafeValue as exc:
            raise WriteError(str(exc)) from None
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
        if self.spec.format in ("raw", "json"):
            return read_existing(self.spec.path, self.spec.format)
        reader = FORMATS[self.spec.format].existing
        data = read_regular(self.spec.path) if reader is not None else None
        return reader(data, self.spec) if reader is not None and data is not None else None


__all__ = [
    "FORMATS",
    "ExistingToken",
    "FileOutput",
    "Format",
    "Output",
    "Renderer",
    "WriteError",
    "renderer_for",
]
