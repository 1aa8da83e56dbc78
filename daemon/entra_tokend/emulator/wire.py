"""Plain data between the HTTP layer and the roles: a parsed request, an answer, an action.

The HTTP layer (``http.py``) turns bytes into a ``Request`` and asks a ``Service`` what to do;
the service answers with a ``Response`` or with one of the misbehaviours only the HTTP layer
can perform on the socket (``Reset``, ``Hang``, ``Delay``). Nothing here touches a socket.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import parse_qsl

JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"


class Endpoint(StrEnum):
    """What a request was aimed at; recorded with it and used to target faults."""

    TOKEN = "token"  # noqa: S105 - an endpoint name: POST /{tenant}/oauth2/v2.0/token
    PROXY_TOKEN = "proxy_token"  # noqa: S105 - the identity-binding proxy's token path
    PROXY_OTHER = "proxy_other"  # anything else sent to the identity-binding proxy
    ACR_EXCHANGE = "acr_exchange"  # POST /oauth2/exchange
    ACR_TOKEN = "acr_token"  # noqa: S105 - GET or POST /oauth2/token
    REGISTRY = "registry"  # GET /v2/
    DISCOVERY = "discovery"  # OIDC documents and JWKS
    ADMIN = "admin"  # /_admin/*
    OTHER = "other"


@dataclass(frozen=True)
class Request:
    """One HTTP request as received. ``headers`` keys are lower case; ``body`` is decoded
    from Content-Length or chunked framing. ``server_name`` is the TLS SNI (None without TLS
    or when the client sent none). Bodies and headers carry secrets: kept out of ``repr``.
    """

    method: str
    target: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    peer: tuple[str, int]
    server_name: str | None = None

    def form_pairs(self) -> list[tuple[str, str]]:
        """The urlencoded body as (name, value) pairs, repeated names kept in order."""
        return parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True)

    def form(self) -> dict[str, str]:
        """The urlencoded body as a dict; a repeated name's values joined by one space
        (how OAuth writes several scopes in one parameter)."""
        return join_pairs(self.form_pairs())

    def query_dict(self) -> dict[str, str]:
        """The query string as a dict, repeated names joined by one space."""
        return join_pairs(list(self.query))


def join_pairs(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """(name, value) pairs as a dict; a repeated name's values are joined with a space."""
    out: dict[str, str] = {}
    for k, v in pairs:
        out[k] = f"{out[k]} {v}" if k in out else v
    return out


@dataclass(frozen=True)
class Response:
    """An answer: status, body bytes, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any, headers: Mapping[str, str] | None = None) -> Response:
        """A JSON answer."""
        return cls(status, json.dumps(data).encode(), JSON, dict(headers or {}))

    @classmethod
    def text(cls, status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
        """A plain-text answer (one line, newline-terminated)."""
        return cls(status, (text.rstrip("\n") + "\n").encode(), TEXT, dict(headers or {}))


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP RST, no answer."""


@dataclass(frozen=True)
class Hang:
    """Hold the connection without answering for ``seconds`` (None: until stop), then close."""

    seconds: float | None


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` (cut short by stop), then answer with what ``then()`` returns."""

    seconds: float
    then: Callable[[], Response]


Outcome = Response | Reset | Hang | Delay


class Service(Protocol):
    """What a listener serves: ``serve`` decides, ``record`` is told the final status."""

    def serve(self, request: Request) -> tuple[Endpoint, Outcome]:
        """Classify ``request`` and decide its outcome."""
        ...

    def record(self, request: Request, endpoint: Endpoint, status: int) -> None:
        """Remember ``request`` with the status sent (0: reset or hung, no answer)."""
        ...
