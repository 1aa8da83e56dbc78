"""The configured token files, built and kept in step with the configuration.

``FileTokens`` holds one ``CredentialSource`` per identity and one runner per ``[token.NAME]``
(made by ``runner.build``, like every runner). ``apply(config)`` is a reload's diff: an
unchanged token keeps its runner and schedule (new tunables apply from its next decision), a
changed one gets a new runner (which adopts its file when it starts, if provably its own), a
removed one stops and its file is left. Files rendered from several tokens (``[file.NAME]``)
are consumers of those runners' events (``templatefiles.TemplateFiles``, a listener of every
runner built here), rebuilt by the same rules. With the endpoint configured, each file's output is
wrapped in a ``MemoryOutput`` so the endpoint can share the token; ``lookup`` gives the
endpoint's ``ondemand.Lookup`` for the current configuration (rebuilt whole on each reload).
Each token file is watched (``outputwatch``): a file another writer deleted or replaced is put
back by its runner (``TokenRunner.output_changed``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from entra_tokend.config import Config
from entra_tokend.credentials import CredentialSource
from entra_tokend.exchange import AcrExchange, ClientPool
from entra_tokend.logging import get_logger
from entra_tokend.metrics import Metrics
from entra_tokend.ondemand import Lookup, SharedToken
from entra_tokend.outputdir import OutputDirectory
from entra_tokend.outputs import FileOutput, Output
from entra_tokend.outputs.memory import MemoryOutput
from entra_tokend.outputs.provenance import fingerprint
from entra_tokend.outputwatch import OutputWatch
from entra_tokend.ports import Exchange, Listener
from entra_tokend.readiness import Readiness
from entra_tokend.runner import Deps, TokenRunner, build
from entra_tokend.templatefiles import TemplateFiles


class FileTokens:
    """Sources, runners and (with the endpoint) shared memories of the configured tokens.

    ``exchange`` is the Entra stage (wrapped in an ``AcrExchange`` for a docker-config token);
    ``share`` wraps outputs for the endpoint (fixed for the process's life).
    """

    def __init__(
        self,
        deps: Deps,
        *,
        exchange: Exchange,
        pool: ClientPool,
        output_dir: OutputDirectory,
        readiness: Readiness,
        metrics: Metrics,
        share: bool,
    ) -> None:
        self.deps = deps
        self._exchange = exchange
        self._pool = pool
        self._output_dir = output_dir
        self._readiness = readiness
        self._metrics = metrics
        self._share = share
        self._log = get_logger()
        self.sources: dict[str, CredentialSource] = {}
        self.runners: dict[str, TokenRunner] = {}
        self.memories: dict[str, MemoryOutput] = {}
        self.files = TemplateFiles(deps, root=output_dir.root, readiness=readiness, metrics=metrics)
        self.running = False
        self.output_watch: OutputWatch | None = None  # the token files'; made by ``watch``

    def apply(self, config: Config) -> None:
        """Make the sources and runners match ``config`` (start new runners when running)."""
        self.deps = replace(self.deps, policy=config.policy)
        for name, ident in config.identities.items():
            current = self.sources.get(name)
            if current is None or current.identity != ident:
                if current is not None:
                    current.close()
                self.sources[name] = CredentialSource(ident, self.deps.clock, self._metrics)
        for name in set(self.sources) - set(config.identities):
            self.sources.pop(name).close()
        old, self.runners = self.runners, {}
        replaced: set[str] = set()
        for name, spec in config.tokens.items():
            runner = old.pop(name, None)
            if (
                runner is not None
                and runner.spec == spec
                and runner.source is self.sources.get(spec.identity)
            ):
                runner.schedule.policy = config.policy  # new tunables from its next decision
            else:
                if runner is not None:
                    self._retire(runner)
                replaced.add(name)
                runner = self._new_runner(config, name)
            self.runners[name] = runner
        for name, runner in old.items():
            self._retire(runner)
            self._metrics.token_removed(name)
            self._log.info("token removed from configuration; its file is left", token=name)
        self.files.deps = self.deps
        self.files.apply(config.files, replaced | set(old), running=self.running)
        if self.running:
            self.start()
            self._readiness.update()

    def _new_runner(self, config: Config, name: str) -> TokenRunner:
        spec = config.tokens[name]
        source = self.sources[spec.identity]
        file = FileOutput(
            spec.output,
            config.output_dir,
            name=spec.name,
            print_=fingerprint(spec, source.identity),
            store=self._output_dir.provenance,
        )
        output: Output = file
        listeners: list[Listener] = [self.files.observe]
        if self._share:
            # The endpoint serves a file token's latest token; without an endpoint nothing
            # reads it, so the wrapper is not kept per token.
            memory = self.memories[name] = MemoryOutput(file, clock=self.deps.clock)
            output = memory
            listeners.append(memory.observe)
        exchange = self._exchange
        if spec.registries:
            exchange = AcrExchange(exchange, spec.registries, self._pool, self.deps.clock)
        runner = build(spec, self.deps, source, exchange, output, listeners=listeners)
        self._readiness.track(name, runner)
        if self.output_watch is not None:
            self.output_watch.add(spec.path, runner.output_changed)
        return runner

    def _retire(self, runner: TokenRunner) -> None:
        """Stop a token's runner (it unsubscribes) and take it out of readiness and sharing."""
        runner.stop()
        if self.output_watch is not None:
            self.output_watch.remove(runner.spec.path, runner.output_changed)
        self.memories.pop(runner.spec.name, None)
        self._readiness.untrack(runner.spec.name)

    def start(self) -> None:
        """Start every runner not started yet (each adopts its file and subscribes)."""
        self.running = True
        for runner in self.runners.values():
            runner.start()
        self.files.fetch_missing(self.runners)

    def lookup(self, config: Config) -> Lookup:
        """The endpoint's view of ``config``: identities, sources, the first file token of
        each (identity, scope), the policy."""
        shared: dict[tuple[str, str], SharedToken] = {}
        for name, runner in self.runners.items():
            memory = self.memories.get(name)
            if memory is not None:
                key = (runner.spec.identity, runner.spec.scope)
                shared.setdefault(key, SharedToken(runner, memory))
        return Lookup(
            dict(config.identities), dict(self.sources), shared, config.policy, config.endpoint
        )

    def watch(self, poll_interval: float) -> None:
        """Watch every identity's projected token (idempotent per source) and every token
        file (from the first call, on the running loop)."""
        for source in self.sources.values():
            source.watch(poll_interval)
        if self.output_watch is None:
            self.output_watch = OutputWatch(asyncio.get_running_loop(), poll_interval)
            for runner in self.runners.values():
                self.output_watch.add(runner.spec.path, runner.output_changed)
            self.output_watch.start()
        self.output_watch.poll_interval = poll_interval

    def check_outputs(self) -> None:
        """Have every runner check its file now, putting back a deleted or replaced one."""
        for runner in self.runners.values():
            runner.output_changed()

    def wake(self) -> None:
        """Make every runner re-evaluate its schedule (a wall-clock jump)."""
        for runner in self.runners.values():
            runner.wake()

    def stop(self) -> list[object]:
        """Stop every runner and source; returns the runners' tasks to await."""
        self.running = False
        if self.output_watch is not None:
            self.output_watch.stop()
        tasks: list[object] = []
        for runner in self.runners.values():
            runner.stop()
            if runner.task is not None:
                tasks.append(runner.task)
        for source in self.sources.values():
            source.close()
        return [*tasks, *self.files.stop()]
