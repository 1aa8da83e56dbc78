"""Files rendered from several tokens (``[file.NAME]``): consumers of runner events.

``TemplateFiles`` is a ``ports.Listener`` on every file token's runner (``wiring.FileTokens``
hands it to ``runner.build``). It keeps the latest token of each token some file needs — only
those — and one ``TemplateFile`` per ``[file.NAME]``, which renders when:

1. a token it needs is written (``Written``), or the file is new or changed at a reload;
2. and every token it needs is held and unexpired — otherwise nothing is written, never a
   partial file;
3. the text is rendered whole in memory (``outputs.multi.render``), then replaces the file
   atomically (``outputs.writer.write_atomic``), then the file's hook runs.

A render that fails — a claim the token lacks (``claims.MissingClaim``), or a write error —
leaves the previous file as it was, is logged once per distinct cause and counted
(``entra_tokend_file_render_failures_total``), and is retried at the next ``Written`` of a
token the file needs. Renders of one file never overlap, and a file replaced at a reload waits
for its predecessor's render in flight, so an older render never lands last.

A token adopted from disk at start carries no value here (its runner delivered it in an earlier
run), so ``start`` asks the runner of each needed token that holds one to refresh now (one
request per such token). Readiness: each file is tracked as ``file:NAME`` — ready once written
and until the earliest expiry of the tokens it was rendered from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from entra_tokend.logging import get_logger
from entra_tokend.model import AccessToken, FileSpec
from entra_tokend.outputs import multi
from entra_tokend.outputs.claims import MissingClaim
from entra_tokend.outputs.writer import WriteError, write_atomic
from entra_tokend.ports import Expired, RunnerEvent, Written
from entra_tokend.readiness import Readiness
from entra_tokend.runner import Deps, State, TokenRunner


class FileMetrics(Protocol):
    """The metrics of ``[file.NAME]`` files (``metrics.Metrics``)."""

    def file_configured(self, name: str) -> None: ...

    def file_removed(self, name: str) -> None: ...

    def file_render_failed(self, name: str, reason: str) -> None: ...


def readiness_key(name: str) -> str:
    """The name ``/readyz`` shows for file ``name`` (':' is in no token's name)."""
    return f"file:{name}"


class TemplateFile:
    """One ``[file.NAME]``: renders from ``held`` (token name → latest token, shared)."""

    def __init__(
        self,
        spec: FileSpec,
        *,
        root: Path,
        held: Mapping[str, AccessToken],
        deps: Deps,
        readiness: Readiness,
        metrics: FileMetrics,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        self.spec = spec
        self.key = readiness_key(spec.name)
        self._root = root
        self._held = held
        self._deps = deps
        self._readiness = readiness
        self._metrics = metrics
        self._after = after
        self._dirty = False
        self._retired = False
        self._problem: str | None = None
        self._expires: float | None = None  # earliest expiry of the tokens rendered last
        self._timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self._log = get_logger(file=spec.name)

    # ---- readiness (``readiness.Tracked``) -------------------------------------------------

    def valid(self) -> bool:
        """True once written, until the earliest expiry of the tokens it holds."""
        return self._expires is not None and self._deps.clock.wall() < self._expires

    @property
    def state_name(self) -> str:
        """``pending`` (never written), ``ok``, ``failing`` (the last render failed) or
        ``expired``."""
        if self._expires is not None and not self.valid():
            return str(State.EXPIRED)
        if self._problem is not None:
            return str(State.FAILING)
        return str(State.OK if self._expires is not None else State.PENDING)

    # ---- rendering ---------------------------------------------------------------------------

    def complete(self) -> dict[str, AccessToken] | None:
        """The tokens to render from, when every needed one is held and unexpired."""
        now = self._deps.clock.wall()
        tokens = {name: self._held.get(name) for name in self.spec.tokens}
        if all(t is not None and t.expires_on > now for t in tokens.values()):
            return {name: t for name, t in tokens.items() if t is not None}
        return None

    def changed(self) -> None:
        """A token it needs changed (or it is new): render, unless a render is under way —
        then that render's task renders once more when it ends."""
        self._dirty = True
        if not self._retired and (self.task is None or self.task.done()):
            self.task = asyncio.get_running_loop().create_task(self._run())

    def recheck(self) -> None:
        """Readiness may have changed (a token it needs expired)."""
        self._readiness.changed(self.key)

    def retire(self) -> None:
        """Stop rendering (removed or replaced at a reload); a render in flight completes."""
        self._retired = True
        self.disarm()

    def disarm(self) -> None:
        """Cancel the readiness recheck at the tokens' expiry (the daemon stops)."""
        if self._timer is not None:
            self._timer.cancel()

    async def _run(self) -> None:
        if self._after is not None:
            await asyncio.wait([self._after])
            self._after = None
        while self._dirty and not self._retired:
            self._dirty = False
            tokens = self.complete()
            if tokens is None:
                return
            await self._render(tokens)

    async def _render(self, tokens: dict[str, AccessToken]) -> None:
        spec = self.spec
        try:
            data = multi.render(spec.template, tokens)
            await asyncio.to_thread(
                write_atomic,
                spec.path,
                data,
                spec.file_mode,
                spec.file_owner,
                spec.file_group,
                root=self._root,
            )
        except (MissingClaim, WriteError) as exc:
            self._failed("missing_claim" if isinstance(exc, MissingClaim) else "write_error", exc)
            return
        expires = min(t.expires_on for t in tokens.values())
        recovered = self._problem is not None
        self._problem = None
        self._expires = expires
        self._log.info(
            "template file recovered" if recovered else "template file written",
            path=str(spec.path),
            tokens=list(tokens),
        )
        self._arm(expires)
        self._readiness.changed(self.key)
        run_hook = self._deps.run_hook
        if (
            spec.hook is not None
            and run_hook is not None
            and not await run_hook(spec.hook, spec.name, spec.path, self._log)
        ):
            self._metrics.file_render_failed(spec.name, "hook")

    def _failed(self, reason: str, exc: Exception) -> None:
        detail = str(exc)  # fixed texts and paths: never a token or a claim's value
        method = self._log.debug if detail == self._problem else self._log.error
        self._problem = detail
        method("template file not written; the previous one is kept", reason=reason, detail=detail)
        self._metrics.file_render_failed(self.spec.name, reason)
        self._readiness.changed(self.key)

    def _arm(self, expires: float) -> None:
        """Recheck readiness when the tokens in the file expire (no runner event says so
        when the file's render has been failing since)."""
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, expires - self._deps.clock.wall())
        self._timer = asyncio.get_running_loop().call_later(delay, self.recheck)


class TemplateFiles:
    """Every ``[file.NAME]`` of the configuration, fed by the runners' events (``observe``)."""

    def __init__(
        self, deps: Deps, *, root: Path, readiness: Readiness, metrics: FileMetrics
    ) -> None:
        self.deps = deps
        self._root = root
        self._readiness = readiness
        self._metrics = metrics
        self.files: dict[str, TemplateFile] = {}
        self.held: dict[str, AccessToken] = {}
        self._users: dict[str, list[TemplateFile]] = {}
        self._log = get_logger()

    def observe(self, event: RunnerEvent) -> None:
        """``ports.Listener``: a needed token's ``Written`` re-renders the files using it; an
        ``Expired`` rechecks their readiness."""
        users = self._users.get(event.name)
        if not users:
            return
        if isinstance(event, Written):
            self.held[event.name] = event.token
            for file in users:
                file.changed()
        elif isinstance(event, Expired):
            for file in users:
                file.recheck()

    def apply(self, specs: Mapping[str, FileSpec], replaced: set[str], *, running: bool) -> None:
        """Match ``specs`` (a reload's rules: an unchanged file is kept as it is, a changed or
        new one is built and — when ``running`` — rendered at once from the held tokens, a
        removed one stops and its file is left). ``replaced`` names tokens whose runner is
        new: their held tokens belong to the old configuration and are dropped."""
        for name in replaced:
            self.held.pop(name, None)
        old, self.files = self.files, {}
        fresh: list[TemplateFile] = []
        for name, spec in specs.items():
            file = old.pop(name, None)
            if file is None or file.spec != spec:
                after = None
                if file is not None:
                    file.retire()
                    after = file.task
                file = self._new(spec, after)
                fresh.append(file)
            self.files[name] = file
        for name, file in old.items():
            file.retire()
            self._readiness.untrack(file.key)
            self._metrics.file_removed(name)
            self._log.info("file removed from configuration; it is left", file=name)
        self._users = {}
        for file in self.files.values():
            for token in file.spec.tokens:
                self._users.setdefault(token, []).append(file)
        for token in set(self.held) - set(self._users):
            del self.held[token]
        if running:
            for file in fresh:
                file.changed()

    def _new(self, spec: FileSpec, after: asyncio.Task[None] | None) -> TemplateFile:
        file = TemplateFile(
            spec,
            root=self._root,
            held=self.held,
            deps=self.deps,
            readiness=self._readiness,
            metrics=self._metrics,
            after=after,
        )
        self._readiness.track(file.key, file)
        self._metrics.file_configured(spec.name)
        return file

    def fetch_missing(self, runners: Mapping[str, TokenRunner]) -> None:
        """Ask each runner holding a token a file needs, whose value is not held here (adopted
        from disk, or needed since a reload), to refresh now."""
        for token in self._users:
            runner = runners.get(token)
            if token not in self.held and runner is not None and runner.state is State.OK:
                runner.refresh_now()

    def stop(self) -> list[Any]:
        """The renders pending or in flight, to await: they complete (``--once`` writes its
        files before it exits), and no event starts another once the runners have stopped."""
        for file in self.files.values():
            file.disarm()
        return [f.task for f in self.files.values() if f.task is not None and not f.task.done()]
