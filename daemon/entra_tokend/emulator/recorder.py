"""Every request the emulator answered, typed, with a condition to wait on.

A record is appended before the client can read its answer (the HTTP layer records, then
flushes), so a test that has its response never races the record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from entra_tokend.emulator.wire import Endpoint

TOKEN_ENDPOINTS = frozenset({Endpoint.TOKEN, Endpoint.PROXY_TOKEN})


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received. ``status`` is 0 when it was reset or hung.

    ``headers`` (lower-case keys) and ``form`` (a repeated field's values joined by one space)
    hold secrets (assertions, tokens, Basic credentials), so they stay out of ``repr``.
    ``endpoint`` says what the request was aimed at; ``server_name`` is the TLS SNI the
    client sent (None over plain HTTP or without SNI); ``query`` is the query string.
    """

    time: float
    path: str
    method: str
    headers: dict[str, str] = field(repr=False)
    form: dict[str, str] = field(repr=False)
    status: int
    peer: tuple[str, int] | None = None
    endpoint: Endpoint = Endpoint.OTHER
    server_name: str | None = None
    query: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def via_proxy(self) -> bool:
        """True when the request was sent to the identity-binding proxy."""
        return self.endpoint in (Endpoint.PROXY_TOKEN, Endpoint.PROXY_OTHER)


class Recorder:
    """An append-only list of ``RecordedRequest`` guarded by a condition variable."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._changed = threading.Condition()
        self._records: list[RecordedRequest] = []
        self.clock = clock

    def record(self, rec: RecordedRequest) -> None:
        """Append ``rec`` and wake every waiter."""
        with self._changed:
            self._records.append(rec)
            self._changed.notify_all()

    def all(self) -> list[RecordedRequest]:
        """A snapshot of every record, oldest first."""
        with self._changed:
            return list(self._records)

    def matching(self, *endpoints: Endpoint) -> list[RecordedRequest]:
        """The records aimed at any of ``endpoints``, oldest first."""
        with self._changed:
            return [r for r in self._records if r.endpoint in endpoints]

    def token_requests(self) -> list[RecordedRequest]:
        """POSTs to a token endpoint, direct or through the identity-binding proxy."""
        with self._changed:
            return [r for r in self._records if _is_token_post(r)]

    def wait_for_token_requests(self, n: int, timeout: float) -> list[RecordedRequest]:
        """Block until at least ``n`` token requests arrived; ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [r for r in self._records if _is_token_post(r)]
                if len(got) >= n:
                    return got
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"emulator saw {len(got)} token requests, expected {n} within {timeout}s"
                    )
                self._changed.wait(remaining)


def _is_token_post(rec: RecordedRequest) -> bool:
    return rec.method == "POST" and rec.endpoint in TOKEN_ENDPOINTS
