"""Ports: the contracts between a token's runner and the stages it is handed, and the one
failure root every stage raises.

Declared here, beside the model, rather than in their consumers, so that every implementation
(``exchange.EntraExchange``/``AcrExchange``, ``outputs.FileOutput``/``MemoryOutput``,
``credentials.CredentialSource``) and every fake in the tests meets the same definition. Nothing
here does I/O; it imports only the model.

The failure hierarchy (each carries a ``Reason``, so the runner maps any of them in one place)::

    Failure                      reason, configuration, retry_after, rotation_may_fix
    ├── assertion.AssertionUnavailable   Reason.ASSERTION_UNAVAILABLE  (kind: missing, ...)
    ├── exchange.errors.ExchangeError    Reason.NETWORK ... CLIENT_ERROR (see that module)
    ├── outputs.writer.WriteError        Reason.WRITE_ERROR
    └── TokenUnavailable                 the endpoint cannot serve a token now

No failure's text holds a secret (assertion, access token, endpoint secret, response body).

Runner events (``Written``, ``Failed``, ``Expired``) are how front ends — ``run --once``, the
endpoint — learn what a runner did; they never read or set flags on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from entra_tokend.model import AccessToken, Hook, Identity, Reason


class Failure(Exception):
    """A stage could not do its part. ``reason`` is the closed-set ``Reason`` (metric label,
    log field); ``configuration`` is True when only a configuration change fixes it;
    ``retry_after`` (seconds) is the server's Retry-After; ``rotation_may_fix`` is True when a
    new projected token may fix it (the runner then retries at once on a rotation);
    ``needs_assertion_claims`` asks the log to show the assertion's iss/sub/aud."""

    reason: Reason = Reason.INTERNAL
    configuration: bool = False
    retry_after: float | None = None
    rotation_may_fix: bool = False
    needs_assertion_claims: bool = False

    def fields(self) -> dict[str, Any]:
        """The failure's facts as log fields (no secret); at least ``detail``."""
        return {"detail": str(self)}

    def safe_detail(self) -> str:
        """One line an application may be shown (the endpoint's error message): fixed text,
        an AADSTS code and its hint; never a secret."""
        return str(self)


class TokenUnavailable(Failure):
    """The endpoint cannot serve a token now. The text is fixed and holds no secret.

    ``reason`` is why the last attempt failed (``Reason.INTERNAL`` when there was none, e.g. a
    timeout); ``configuration`` is True when only a configuration change fixes it (an app
    should not retry: the endpoint answers 4xx); ``detail`` a safe one-line cause (an AADSTS
    code and hint), empty when unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: Reason = Reason.INTERNAL,
        configuration: bool = False,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.configuration = configuration
        self.detail = detail

    def safe_detail(self) -> str:
        """``detail`` when known, else the message."""
        return self.detail or str(self)


class ClientAssertion(Protocol):
    """One version of the projected token (``assertion.Assertion``)."""

    @property
    def token(self) -> str:
        """The JWT (a secret)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Its non-secret claims (iss, sub, aud, expiry) for a log line."""
        ...


Subscriber = Callable[[], None]
"""Called on the event loop when an identity's assertion changed or became usable again."""


class AssertionProvider(Protocol):
    """An identity's credential source (``credentials.CredentialSource``). Rotations are part
    of the contract: a runner subscribes when it starts and unsubscribes when it stops."""

    @property
    def identity(self) -> Identity:
        """The identity whose projected token this is."""
        ...

    def current(self) -> ClientAssertion:
        """The usable assertion now. Raises ``assertion.AssertionUnavailable``."""
        ...

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback`` on every rotation (and when the token becomes usable again)."""
        ...

    def unsubscribe(self, callback: Subscriber) -> None:
        """Stop calling ``callback`` (an equal one will do); unknown ones are ignored."""
        ...


class Exchange(Protocol):
    """An exchange stage: turns an assertion into an access token."""

    async def exchange(self, identity: Identity, scope: str, assertion: str) -> AccessToken:
        """Raises ``exchange.errors.ExchangeError`` (a ``Failure``); its text never holds a
        secret."""
        ...


class Adoptable(Protocol):
    """A token an earlier run delivered (``outputs.provenance.ExistingToken``): unix times."""

    @property
    def issued_at(self) -> float | None: ...

    @property
    def expires_on(self) -> float: ...

    @property
    def lifetime(self) -> float | None:
        """The lifetime its refresh was planned on (seconds), when known."""
        ...


class Output(Protocol):
    """Where a runner delivers its tokens (a file, the endpoint's memory)."""

    @property
    def location(self) -> Path | None:
        """The file delivered to (for logs and hooks), None for an output only in memory."""
        ...

    async def deliver(self, token: AccessToken) -> None:
        """Make ``token`` available to its consumer. Raises ``outputs.writer.WriteError`` (a
        ``Failure``), leaving what was delivered before untouched."""
        ...

    def adoptable(self, now: float) -> Adoptable | str | None:
        """A token an earlier run delivered that may be served until it is due (``now`` is
        unix time), why such a token is not adoptable (str), or None when there is none."""
        ...

    def check(self) -> str | None:
        """None while what was last delivered (or adopted) is in place (or nothing was yet);
        ``"missing"`` or ``"replaced"`` when another writer deleted or replaced it."""
        ...

    async def restore(self) -> bool:
        """Put back what was last delivered (the same token, no new one); False when there is
        nothing to put back. Raises ``outputs.writer.WriteError``."""
        ...


class TokenMetrics(Protocol):
    """The metrics a runner reports (``metrics.Metrics``); seconds and unix times."""

    def token_configured(self, token: str, identity: str, *, hook: bool = False) -> None: ...

    def token_removed(self, token: str) -> None: ...

    def token_adopted(self, token: str, expires_on: float) -> None: ...

    def token_written(self, token: str, expires_on: float, now: float) -> None: ...

    def refresh_failed(self, token: str, reason: Reason) -> None: ...

    def exchange_observed(self, identity: str, seconds: float) -> None: ...

    def hook_failed(self, token: str) -> None: ...

    def output_redelivered(self, token: str) -> None: ...


class ReadinessSink(Protocol):
    """Where a runner reports that its validity may have changed (``readiness.Readiness``)."""

    def changed(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Written:
    """Runner event: token ``name``'s ``token`` was delivered and its hook (if any) has run."""

    name: str
    token: AccessToken


@dataclass(frozen=True, slots=True)
class Failed:
    """Runner event: an attempt of token ``name`` failed. ``detail`` may be shown to an
    application (fixed text, an AADSTS code and hint; never a secret); ``configuration`` is
    True when only a configuration change fixes it."""

    name: str
    reason: Reason
    detail: str
    configuration: bool = False


@dataclass(frozen=True, slots=True)
class Expired:
    """Runner event: token ``name``'s last good token has passed its expiry (once)."""

    name: str


RunnerEvent = Written | Failed | Expired
Listener = Callable[[RunnerEvent], None]
"""Called synchronously, on the event loop, with each event of the runners it listens to."""


HookRunner = Callable[[Hook, str, Path, Any], Awaitable[bool]]
"""Runs a token's post-write hook: (hook, token name, token path, logger) → succeeded
(``hooks.run_hook``)."""


class Supervisor(Protocol):
    """A front end that decides when the daemon's run ends (``once.OnceSupervisor``,
    ``supervise.ExecSupervisor``): it listens to the runners' events from ``attach`` (called
    before the runners start) and ``wait`` (called after) returns the exit code."""

    def attach(self) -> None: ...

    async def wait(self) -> int: ...

    def stop(self) -> None:
        """The daemon is asked to stop (SIGTERM/SIGINT, unless ``signal_handlers`` takes them)."""
        ...

    def signal_handlers(self) -> Mapping[int, Callable[[], None]]:
        """Signal number → handler, installed over the daemon's own (empty: the daemon's)."""
        ...
