"""Why a token request failed: one exception class per ``Reason``.

The hierarchy::

    ports.Failure            the root of every stage's failure (carries the Reason)
    └── ExchangeError        every failed request; reason, request_id, details, hint
        ├── NetworkError     no answer (refused, reset, DNS, TLS)     Reason.NETWORK
        ├── RequestTimeout   no complete answer within the timeout    Reason.TIMEOUT
        ├── Throttled        HTTP 429; retry_after                    Reason.THROTTLED
        ├── ServerError      HTTP 5xx; retry_after                    Reason.SERVER_ERROR
        ├── InvalidResponse  not a usable token response              Reason.INVALID_RESPONSE
        └── ClientError      HTTP 4xx with an error body (AADSTS)     Reason.CLIENT_ERROR
                             configuration: only a config change fixes it

No message ever holds the assertion, the access token or a response body: messages are built
from fixed text, status codes and the error fields Entra documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from entra_tokend.model import Reason
from entra_tokend.ports import Failure


@dataclass(frozen=True)
class ErrorDetails:
    """What the token service said about a failed request: the facts a support case needs."""

    status: int | None = None
    error: str | None = None
    aadsts: int | None = None
    description: str | None = None
    trace_id: str | None = None
    correlation_id: str | None = None

    def fields(self) -> dict[str, Any]:
        """Non-empty fields for a log line."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


class ExchangeError(Failure):
    """A failed token request. ``reason`` is its fixed ``Reason``; ``hint`` says what to check
    (or None); ``configuration`` is True when retrying soon cannot help."""

    reason: Reason = Reason.NETWORK

    def __init__(
        self,
        message: str,
        *,
        request_id: str,
        details: ErrorDetails | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
        configuration: bool = False,
        needs_assertion_claims: bool = False,
        rotation_may_fix: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.details = details or ErrorDetails()
        self.retry_after = retry_after
        self.hint = hint
        self.configuration = configuration
        # The log should show the assertion's iss/sub/aud (a federation mismatch).
        self.needs_assertion_claims = needs_assertion_claims
        # A new projected token (kubelet's rotation) may fix it: retry on rotation at once.
        self.rotation_may_fix = rotation_may_fix

    def fields(self) -> dict[str, Any]:
        """Log fields: request id, message, the service's error fields, the hint."""
        fields: dict[str, Any] = {"request_id": self.request_id, "detail": self.message}
        fields.update(self.details.fields())
        if self.hint:
            fields["hint"] = self.hint
        return fields

    def safe_detail(self) -> str:
        """``AADSTS<code>`` and the hint when Entra sent a code, else the fixed message."""
        if self.details.aadsts is None:
            return self.message
        return f"AADSTS{self.details.aadsts}" + (f": {self.hint}" if self.hint else "")


class NetworkError(ExchangeError):
    """Connection refused, reset, TLS failure, DNS: the request never got an answer."""

    reason = Reason.NETWORK


class RequestTimeout(ExchangeError):
    """No answer within the request timeout."""

    reason = Reason.TIMEOUT


class Throttled(ExchangeError):
    """HTTP 429: the service asks us to slow down (honour ``retry_after``)."""

    reason = Reason.THROTTLED


class ServerError(ExchangeError):
    """HTTP 5xx."""

    reason = Reason.SERVER_ERROR


class InvalidResponse(ExchangeError):
    """An answer that is not a usable token response (HTML, non-JSON, missing fields)."""

    reason = Reason.INVALID_RESPONSE


class ClientError(ExchangeError):
    """HTTP 4xx with an error body: the request itself was refused."""

    reason = Reason.CLIENT_ERROR
