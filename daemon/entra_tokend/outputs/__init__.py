"""Outputs: how an issued token becomes bytes in a file.

A format is a ``Renderer``: ``AccessToken -> bytes``, one small module per format (``raw``,
``jsondoc``, ``header``, ``envfile``, ``template``, ``dockerconfig``). ``renderer_for`` builds
it from a token's ``OutputSpec`` (formats with settings — variable names, a template — read
them there); ``FileOutput`` hands the bytes to the atomic writer (``writer``). The runner
sees only the ``ports.Output`` protocol (re-exported here), so an output that is not a file
(the local token endpoint's cache) plugs in the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from entra_tokend.logging import remember_secret
from entra_tokend.model import AccessToken, OutputSpec
from entra_tokend.outputs import dockerconfig, envfile, header, jsondoc, raw, template
from entra_tokend.outputs.claims import MissingClaim
from entra_tokend.outputs.provenance import ExistingToken, Fingerprint, ProvenanceStore
from entra_tokend.outputs.writer import WriteError, make_directories, write_atomic
from entra_tokend.ports import Adoptable, Output
from entra_tokend.util.files import read_regular

Renderer = Callable[[AccessToken], bytes]
"""Turns an issued token into a file's complete contents."""

RendererFactory = Callable[[OutputSpec], Renderer]
"""Builds a format's renderer from a token's ``OutputSpec`` (its format settings)."""


def _fixed(render: Renderer) -> RendererFactory:
    return lambda _spec: render


FORMATS: dict[str, RendererFactory] = {
    "raw": _fixed(raw.render),
    "json": _fixed(jsondoc.render),
    "header": _fixed(header.render),
    "env": envfile.renderer,
    "template": template.renderer,
    "docker-config": _fixed(dockerconfig.render),
}
"""Every format name a ``[token.NAME] format`` may use, and how its renderer is built."""


def renderer_for(spec: OutputSpec) -> Renderer:
    """The renderer of ``spec.format`` with ``spec``'s settings. Raises KeyError for an
    unknown format (config rejects those at load time)."""
    return FORMATS[spec.format](spec)


class FileOutput:
    """A token file inside ``root`` (the output_dir), written atomically off the event loop,
    with a provenance record so that a restart adopts it only if it is provably this token's.

    ``name`` is the token's name; ``print_`` the configuration fingerprint
    (``provenance.fingerprint``); ``store`` the output_dir's ``ProvenanceStore``.

    It keeps the bytes it last wrote (or adopted), so that ``check`` can tell a file another
    writer deleted or replaced from its own, and ``restore`` can put them back without a new
    token (about a token's size per file token).
    """

    # One per token. _data: the bytes on disk as far as we know; _writing: bytes being written
    # now (the rename may land before the worker thread returns); _sig: (dev, ino, size,
    # mtime_ns) of the file we wrote, so an unchanged file costs one lstat to check.
    __slots__ = (
        "_data",
        "_name",
        "_print",
        "_render",
        "_sig",
        "_store",
        "_writing",
        "root",
        "spec",
    )

    def __init__(
        self,
        spec: OutputSpec,
        root: Path,
        *,
        name: str,
        print_: Fingerprint,
        store: ProvenanceStore,
    ) -> None:
        self.spec = spec
        self.root = root
        self._render = renderer_for(spec)
        self._name = name
        self._print = print_
        self._store = store
        self._data: bytes | None = None
        self._writing: bytes | None = None
        self._sig: tuple[int, int, int, int] | None = None

    @property
    def location(self) -> Path:
        """The token file's path."""
        return self.spec.path

    async def deliver(self, token: AccessToken) -> None:
        """Render and atomically replace the file, then record its provenance. Raises
        ``WriteError`` when the file could not be replaced (also for a token the format cannot
        hold, e.g. an ``env`` value that would need quoting, or a claim a template uses that the
        token lacks: a configuration mistake, so it backs off as one)."""
        try:
            data = self._render(token)
        except envfile.UnsafeValue as exc:
            raise WriteError(str(exc)) from None
        except MissingClaim as exc:
            error = WriteError(f"{self.spec.path}: {exc}")
            error.configuration = True
            raise error from None
        await self._put(data, token)

    async def restore(self) -> bool:
        """Write back the bytes last written or adopted (the same token: no new one, no new
        provenance record); False when there are none. Raises ``WriteError``."""
        if self._data is None:
            return False
        await self._put(self._data, None)
        return True

    async def _put(self, data: bytes, token: AccessToken | None) -> None:
        self._writing = data
        try:
            self._sig = await asyncio.to_thread(self._write, data, token)
            self._data = data
        finally:
            self._writing = None

    def _write(self, data: bytes, token: AccessToken | None) -> tuple[int, int, int, int] | None:
        spec = self.spec
        if token is None:  # a restore: a token subdirectory removed with the file is made again
            with contextlib.suppress(OSError):  # else the write below fails and says why
                make_directories(spec.path.parent, self.root)
        write_atomic(
            spec.path, data, spec.file_mode, spec.file_owner, spec.file_group, root=self.root
        )
        if token is not None:
            with contextlib.suppress(OSError, WriteError):
                # Without a record the file is simply not adopted after a restart (one refresh).
                self._store.record(self._name, self._print, data, token)
        try:
            return _signature(os.lstat(spec.path))
        except OSError:
            return None

    def check(self) -> str | None:
        """Whether the file still holds what was last written or adopted: None when it does
        (or nothing was yet), ``"missing"`` when nothing is at the path, ``"replaced"`` when
        something else is (other bytes, a symlink, a directory). Reads at most the expected
        size, only when the file's signature changed; never blocks (``read_regular``)."""
        data = self._data
        if data is None:
            return None
        try:
            st = os.lstat(self.spec.path)
        except FileNotFoundError:
            return "missing"
        except OSError:
            return None  # cannot look (EACCES): not evidence of a change
        sig = _signature(st)
        if sig == self._sig:
            return None
        expected = {data} if self._writing is None else {data, self._writing}
        if stat.S_ISREG(st.st_mode) and st.st_size in {len(x) for x in expected}:
            try:
                found = read_regular(self.spec.path, max(map(len, expected)), follow_symlinks=False)
            except OSError:
                found = None
            if found == data:
                self._sig = sig  # rewritten in place with the same bytes, or touched
            if found in expected:
                return None
        return "replaced"

    def adoptable(self, now: float) -> ExistingToken | str | None:
        """The file an earlier run wrote, if its provenance checks out (see ``provenance``)."""
        if not os.path.lexists(self.spec.path):
            return None
        owners = {os.getuid()} | (
            {self.spec.file_owner} if self.spec.file_owner is not None else set()
        )
        found = self._store.adoptable(self._name, self._print, self.spec.path, owners, now)
        if not isinstance(found, str):
            self._data, self._sig = found.content, None
        return found

    def read_back(self, found: Adoptable) -> AccessToken | None:
        """The access token an adopted file (``found``, just checked by ``adoptable``) holds,
        for the formats that hold it as issued (``raw``, ``json``) so the endpoint can serve
        it; None for the other formats or a file that no longer reads as one."""
        if self.spec.format not in ("raw", "json") or self.spec.registries:
            return None
        try:
            text = read_regular(self.spec.path, READ_BACK_LIMIT, follow_symlinks=False).decode()
            value: object = text
            if self.spec.format == "json":
                value = json.loads(text).get("access_token")
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            return None
        remember_secret(value)
        issued = found.issued_at
        lifetime = found.lifetime or (found.expires_on - issued if issued is not None else 0.0)
        return AccessToken(
            token=value,
            token_type="Bearer",  # noqa: S106 - the scheme's name
            expires_in=lifetime,
            expires_on=found.expires_on,
            refresh_in=None,
            scope="",
            request_id="",
        )


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


READ_BACK_LIMIT = 64 * 1024
"""Bytes of a token file ``read_back`` reads at most (an Entra token is a few KiB)."""


__all__ = [
    "FORMATS",
    "ExistingToken",
    "FileOutput",
    "Output",
    "ProvenanceStore",
    "Renderer",
    "RendererFactory",
    "WriteError",
    "renderer_for",
]
