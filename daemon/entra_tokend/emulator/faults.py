"""Injected misbehaviour: typed faults, a locked FIFO queue, and the answers they produce.

A ``Fault`` targets one kind of endpoint (``target``): Entra's token endpoint (the default),
the identity-binding proxy itself, or the registry token service's ``/oauth2/exchange`` and
``/oauth2/token``. Each applies to the next ``count`` requests of its target, in the order
queued. Answer-type faults are shaped like the real service they stand in for: Entra's
AADSTS body for ``token``, ACR's ``{"errors": [...]}`` for the registry, a plain-text line for
the proxy (which answers its own failures with a non-Entra body). Two kinds play a registry
that answers the exchange wrongly: ``refresh_exp`` (a refresh token whose ``exp`` claim is the
fault's ``exp``, verbatim JSON: ``1e400``, ``NaN``, a time in the past) and ``echo`` (the Entra
token the client sent, as the refresh token and as the correlation id).
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from entra_tokend.emulator import errors
from entra_tokend.emulator._crypto import b64url
from entra_tokend.emulator.wire import Delay, Hang, Outcome, Reset, Response

FaultKind = Literal[
    "status",
    "delay",
    "reset",
    "html",
    "non_json",
    "no_access_token",
    "no_expires_in",
    "hang",
    "refresh_exp",
    "echo",
]
FaultTarget = Literal["token", "proxy", "acr_exchange", "acr_token"]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))
FAULT_TARGETS: frozenset[str] = frozenset(get_args(FaultTarget))
_FIELDS = {"kind", "count", "status", "retry_after", "delay", "error", "aadsts", "target", "exp"}
_REFRESH_HEADER = b'{"alg":"ES256","typ":"JWT"}'  # unsigned: the client reads claims only
_REGISTRY_ANSWERS = frozenset({"refresh_exp", "echo"})  # kinds only an exchange can answer
_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>Service unavailable</title></head>"
    b"<body><h1>Our services aren't available right now</h1>"
    b"<p>We're working to restore all services as soon as possible.</p></body></html>"
)


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, applied to the next ``count`` requests of ``target``.

    ``status`` is the HTTP status for kind "status" (default 500) and "html" (default 502);
    "non_json", "no_access_token" and "no_expires_in" answer 200 unless ``status`` is given.
    "delay" waits ``delay`` seconds then answers normally; "hang" holds the connection
    without answering until ``stop()`` (or ``delay`` seconds when positive), then closes it;
    "reset" aborts the connection with a TCP RST and no answer. ``error`` and ``aadsts``
    override the OAuth error and AADSTS code of an Entra-shaped "status" answer (``error`` is
    the ``code`` of an ACR-shaped one). ``exp`` is the JSON text of the ``exp`` claim a
    "refresh_exp" answer's refresh token carries; "refresh_exp" and "echo" target
    ``acr_exchange`` only. Raises ``ValueError`` for an unknown kind or target, a count below
    1, a negative delay, or an ``exp`` that is not a JSON number.
    """

    kind: FaultKind
    count: int = 1
    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    error: str | None = None
    aadsts: int | None = None
    target: FaultTarget = "token"
    exp: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}"
            )
        if self.target not in FAULT_TARGETS:
            raise ValueError(
                f"unknown fault target {self.target!r}; expected one of {sorted(FAULT_TARGETS)}"
            )
        if self.count < 1:
            raise ValueError("fault count must be at least 1")
        if self.delay < 0:
            raise ValueError("fault delay must not be negative")
        if self.kind in _REGISTRY_ANSWERS and self.target != "acr_exchange":
            raise ValueError(f'fault kind {self.kind!r} needs target "acr_exchange"')
        if self.kind == "refresh_exp" and not _is_json_number(self.exp):
            raise ValueError('fault kind "refresh_exp" needs exp: a JSON number such as 1e400')

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Build a fault from the admin endpoint's JSON object; ``ValueError`` if invalid."""
        unknown = set(data) - _FIELDS
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        kind = data.get("kind")
        if not isinstance(kind, str) or kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {sorted(FAULT_KINDS)}")
        target = data.get("target", "token")
        if not isinstance(target, str) or target not in FAULT_TARGETS:
            raise ValueError(f"fault target must be one of {sorted(FAULT_TARGETS)}")
        retry_after = data.get("retry_after")
        return cls(
            kind=kind,  # type: ignore[arg-type]  # checked against FAULT_KINDS above
            count=int(data.get("count", 1)),
            status=None if data.get("status") is None else int(data["status"]),
            retry_after=None if retry_after is None else str(retry_after),
            delay=float(data.get("delay", 0.0)),
            error=None if data.get("error") is None else str(data["error"]),
            aadsts=None if data.get("aadsts") is None else int(data["aadsts"]),
            target=target,  # type: ignore[arg-type]  # checked against FAULT_TARGETS above
            exp=None if data.get("exp") is None else str(data["exp"]),
        )


@dataclass
class _Entry:
    fault: Fault
    remaining: int


class FaultQueue:
    """Queued faults, FIFO per target; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[_Entry] = deque()

    def inject(self, *faults: Fault) -> None:
        """Queue ``faults`` in order."""
        with self._lock:
            self._entries.extend(_Entry(f, f.count) for f in faults)

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._entries.clear()

    def pending(self) -> int:
        """How many requests the queued faults will still affect (all targets)."""
        with self._lock:
            return sum(e.remaining for e in self._entries)

    def take(self, targets: Iterable[FaultTarget]) -> Fault | None:
        """Consume one use of the oldest fault aimed at any of ``targets``, or None."""
        wanted = set(targets)
        with self._lock:
            for entry in self._entries:
                if entry.fault.target in wanted:
                    entry.remaining -= 1
                    if entry.remaining <= 0:
                        self._entries.remove(entry)
                    return entry.fault
        return None


def apply(
    fault: Fault,
    normal: Callable[[], Response],
    lifetime: int,
    form: Callable[[], dict[str, str]] = dict,
) -> Outcome:
    """The outcome of ``fault``: a socket action, a delayed normal answer, or a fault answer.

    ``normal`` computes the normal answer (used by "delay", after the wait); ``lifetime`` is
    the access-token lifetime (seconds) a well-formed-but-broken Entra body advertises;
    ``form`` gives the request's form fields (what "echo" sends back).
    """
    if fault.kind == "reset":
        return Reset()
    if fault.kind == "hang":
        return Hang(fault.delay if fault.delay > 0 else None)
    if fault.kind == "delay":
        return Delay(fault.delay, normal)
    if fault.kind == "echo":
        return _echo(fault, form().get("access_token", ""))
    return answer(fault, lifetime)


def answer(fault: Fault, lifetime: int) -> Response:
    """The response an answer-type fault gives, shaped for its target."""
    extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    if fault.kind == "html":
        return Response(fault.status or 502, _HTML_PAGE, "text/html; charset=utf-8", extra)
    if fault.kind == "status":
        return _status_answer(fault, extra)
    status = fault.status or 200
    if fault.kind == "non_json":
        return Response(status, b'{"token_type":"Bearer","expires_in":', headers=extra)
    if fault.kind == "refresh_exp":
        claims = f'{{"exp":{fault.exp},"grant_type":"refresh_token"}}'.encode()
        token = f"{b64url(_REFRESH_HEADER)}.{b64url(claims)}.{_noise()}"
        return Response.json(status, {"refresh_token": token}, extra)
    if fault.target in ("acr_exchange", "acr_token"):
        # A 200 that lacks the token field the client needs.
        return Response.json(status, {"token_type": "Bearer"}, extra)
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
    }
    if fault.kind == "no_expires_in":
        # An unsigned, obviously fake token: a broken answer never carries a real one.
        body = {"token_type": "Bearer", "access_token": "emulator-fault." + _noise()}
    return Response.json(status, body, extra)


def _status_answer(fault: Fault, extra: dict[str, str]) -> Response:
    status = fault.status or 500
    if fault.target == "token":
        err = errors.for_status(
            status, error=fault.error, aadsts=fault.aadsts, retry_after=fault.retry_after
        )
        return Response(err.status, err.encode(), headers=err.headers)
    if fault.target == "proxy":
        return Response.text(status, f"identity-binding proxy: injected HTTP {status}", extra)
    code = fault.error or _ACR_CODES.get(status, "UNKNOWN")
    body = {"errors": [{"code": code, "message": f"injected HTTP {status} from the emulator"}]}
    return Response.json(status, body, {**extra, ACR_CORRELATION_HEADER: str(uuid.uuid4())})


ACR_CORRELATION_HEADER = "X-Ms-Correlation-Request-Id"
# Distribution's error codes (docker/distribution registry/api/errcode) per status.
_ACR_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NAME_UNKNOWN", 429: "TOOMANYREQUESTS"}


def _echo(fault: Fault, sent: str) -> Response:
    """A registry echoing the Entra token it was sent: as the refresh token (status 200) or in
    an error, and as the correlation id either way."""
    status = fault.status or 200
    body: dict[str, Any] = {"refresh_token": sent}
    if status != 200:
        body = {"errors": [{"code": _ACR_CODES.get(status, "UNKNOWN"), "message": "echo"}]}
    return Response.json(status, body, {ACR_CORRELATION_HEADER: sent})


def _is_json_number(text: str | None) -> bool:
    try:
        value = json.loads(text) if text is not None else None
    except ValueError:
        return False
    return isinstance(value, int | float) and not isinstance(value, bool)


def _noise() -> str:
    return b64url(secrets.token_bytes(12))
