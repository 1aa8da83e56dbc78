"""structlog configuration: JSON lines (or a console renderer) with redaction last.

Never logging secrets is the rule; the redaction processor is the safety net behind it. It
runs on the rendered line, after every other processor, so nothing added later in the chain
can slip a JWT past it.
"""

from __future__ import annotations

import bisect
import logging
import re
import sys
from typing import Any, TextIO

import structlog

# JWTs (access tokens, assertions) all start with a base64url '{"' header: eyJ.
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# A piece of one (a cut error text): a base64url JSON object start of some length.
_JWT_PART_RE = re.compile(r"eyJ[A-Za-z0-9_-]{16,}")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_ASSERTION_RE = re.compile(r"(?i)(client_assertion=)[^&\s\"']+")
REDACTED = "[REDACTED]"

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}

# Every secret the process holds (assertions, issued tokens, registry refresh tokens, endpoint
# secrets), redacted by value: shape rules miss opaque tokens, JWE and non-`eyJ` assertions.
# Bounded (oldest dropped) so a long run does not grow without end; current secrets are
# re-registered each time they are issued or read.
_MAX_SECRETS = 8192
_MIN_SECRET_LENGTH = 8  # shorter values would redact ordinary words
_secrets: dict[str, None] = {}
# The secrets by their first _MIN_SECRET_LENGTH characters, longest first. Up to
# _SCAN_FROM secrets a line is searched for each of them (C substring search, ~80 ns per
# secret on a 300-character line); beyond, the line is scanned once, position by position
# (~55 us per 300 characters whatever the number of secrets), because the per-secret loop
# grew with every token: 0.24 ms per line with 1,000 tokens (3,001 secrets with their JWT
# parts). Measured here, bench/FINDINGS.md round 4.
_by_prefix: dict[str, list[str]] = {}
_SCAN_FROM = 1024


def remember_secret(*values: str) -> None:
    """Redact each of ``values`` (at least 8 characters) from every log line from now on."""
    # Each dot-separated part of a JWT-shaped secret too: a signature echoed on its own is
    # most of the credential (header and payload are largely predictable).
    parts = [part for value in values if value.count(".") == 2 for part in value.split(".")]
    for value in (*values, *(p for p in parts if len(p) >= 16)):
        if len(value) < _MIN_SECRET_LENGTH:
            continue
        if value in _secrets:
            del _secrets[value]  # re-inserted below: now the newest
        else:
            bucket = _by_prefix.setdefault(value[:_MIN_SECRET_LENGTH], [])
            bisect.insort(bucket, value, key=_longest_first)
        _secrets[value] = None
        if len(_secrets) > _MAX_SECRETS:
            _forget(next(iter(_secrets)))


def _longest_first(value: str) -> int:
    return -len(value)


def _forget(value: str) -> None:
    del _secrets[value]
    prefix = value[:_MIN_SECRET_LENGTH]
    bucket = _by_prefix[prefix]
    bucket.remove(value)
    if not bucket:
        del _by_prefix[prefix]


def _redact_remembered(text: str) -> str:
    """``text`` with every occurrence of a remembered secret replaced (many secrets: scanning
    left to right, taking the longest secret that starts at each position)."""
    if len(_secrets) < _SCAN_FROM:
        for secret in _secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text
    index = _by_prefix
    width = _MIN_SECRET_LENGTH
    pieces: list[str] = []
    kept = 0  # text[kept:pos] is still to be copied
    pos = 0
    last = len(text) - width
    while pos <= last:
        bucket = index.get(text[pos : pos + width])
        if bucket is not None:
            for secret in bucket:
                if text.startswith(secret, pos):
                    pieces.append(text[kept:pos])
                    pieces.append(REDACTED)
                    pos = kept = pos + len(secret)
                    break
            else:
                pos += 1
            continue
        pos += 1
    if not pieces:
        return text
    pieces.append(text[kept:])
    return "".join(pieces)


def redact_text(text: str) -> str:
    """Replace every remembered secret, and anything shaped like a JWT, a bearer credential or
    a form assertion, with ``[REDACTED]``."""
    text = _redact_remembered(text)
    text = _JWT_RE.sub(REDACTED, text)
    text = _JWT_PART_RE.sub(REDACTED, text)
    text = _BEARER_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _ASSERTION_RE.sub(lambda m: m.group(1) + REDACTED, text)


def _redact_rendered(_logger: Any, _method: str, rendered: Any) -> Any:
    if isinstance(rendered, str):
        return redact_text(rendered)
    return rendered


class _ResilientStream:
    """A log stream whose failures never reach the caller.

    If whatever reads stderr goes away (a pipe to a dead `tee`, a closed journal socket), a
    write raises BrokenPipeError; raised from a log call inside a token's task, that would end
    the token's refreshes. Losing log lines is the lesser harm: they are dropped and counted
    (``dropped``), and the daemon keeps refreshing tokens.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.dropped = 0

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: a closed file
            self.dropped += 1
            return 0

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self.dropped += 1

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog once for the process; ``auto`` is JSON unless stderr is a terminal."""
    out = _ResilientStream(stream or sys.stderr)
    console = log_format == "console" or (log_format == "auto" and out.isatty())
    renderer: Any
    if console:
        # plain_traceback: rich's default shows local variables, which may hold tokens.
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            renderer,
            _redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.ERROR)),
        logger_factory=structlog.PrintLoggerFactory(out),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [_ToStructlog()]
    root.setLevel(logging.WARNING)


class _ToStructlog(logging.Handler):
    """Routes the standard library's logging (watchdog, asyncio, httpx use it) through the
    same chain, so every line on stderr has one shape (JSON in json mode) and is redacted."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed format arguments: keep the template
            message = str(record.msg)
        structlog.get_logger().log(record.levelno, message, logger=record.name)


def get_logger(**bind: Any) -> Any:
    """A bound logger; ``bind`` adds fields such as token= or identity=."""
    return structlog.get_logger().bind(**bind)
