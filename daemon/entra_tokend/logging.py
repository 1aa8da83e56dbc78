"""structlog configuration: JSON lines (or a console renderer) with redaction last.

Never logging secrets is the rule; the redaction processor is the safety net behind it. It
runs on the rendered line, after every other processor, so nothing added later in the chain
can slip a JWT past it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any, TextIO

import structlog

# JWTs (access tokens, assertions) all start with a base64url '{"' header: eyJ. A JWE has five
# dot-separated parts, a JWS three. Only from the start of a base64url run (lookbehind) and
# without backtracking (possessive): otherwise, tried at every "eyJ" inside one long run, the
# pattern is quadratic in the run's length, and an error text is input from outside.
_JWT_RE = re.compile(
    r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}+\.[A-Za-z0-9_-]{4,}+(?:\.[A-Za-z0-9_-]*+){1,3}+"
)
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
#
# What is kept of a secret is not the secret: its first _PREFIX characters, its length and its
# hash (the interpreter's keyed SipHash, 64 bits). A line is scanned once, position by
# position: where the next _PREFIX characters are a known prefix, the slice of each known
# length is hashed and looked up. Cost per line grows with the line, not with the number of
# secrets (a loop over every secret would grow with every token configured), and the process
# keeps no copy of a token it has delivered just to redact it (memory per token). A different
# secret with the same prefix, length and 64-bit hash would be redacted too: over-redaction,
# never a leak.
#
# Values the shape rules redact whole (JWTs, and base64url parts starting with "eyJ": JWT/JWE
# headers and payloads) are not registered: they share their first characters by the
# thousand (one issuer, one header), which would make each occurrence of that prefix in a line
# cost a hash per distinct length. A JWT's signature is registered, and so is every other
# value, whatever its first characters.
# _SCAN_BUDGET bounds the candidate checks per character of a line; a line that needs more
# (a hostile service issuing secrets that share a prefix, then echoing it) is withheld whole.
_MAX_SECRETS = 8192
_MIN_SECRET_LENGTH = 8  # shorter values would redact ordinary words
_PREFIX = _MIN_SECRET_LENGTH
_SCAN_BUDGET = 4
WITHHELD = "[REDACTED: line withheld, too costly to check for secrets]"
# hash -> (prefix, length), oldest first: the bound's order.
_remembered: dict[int, tuple[str, int]] = {}
# Hashes never forgotten (``remember_secret(pin=True)``): a few endpoint secrets.
_pinned: set[int] = set()
# prefix -> length -> hashes of the remembered secrets with that prefix and length.
_index: dict[str, dict[int, set[int]]] = {}


def remember_secret(*values: str, pin: bool = False) -> None:
    """Redact each of ``values`` (at least 8 characters) from every log line from now on.

    The newest ``_MAX_SECRETS`` are kept; ``pin`` keeps these for the process's life whatever
    comes after (the endpoint secret: registered once, while tokens are registered at every
    issue and would otherwise push it out)."""
    # Each dot-separated part of a JWT-shaped secret too: a signature echoed on its own is
    # most of the credential (header and payload are largely predictable).
    parts = [part for value in values if value.count(".") == 2 for part in value.split(".")]
    # As a JSON renderer writes it, too: a secret with a quote, a backslash or a non-ASCII
    # character (an endpoint secret may have them) appears escaped in a JSON log line.
    escaped = [e for value in values if (e := json.dumps(value)[1:-1]) != value]
    for value in (*values, *escaped, *(p for p in parts if len(p) >= 16)):
        if len(value) < _MIN_SECRET_LENGTH or _shape_redacts(value):
            continue
        digest = hash(value)
        entry = _remembered.pop(digest, None)
        if entry is None:
            entry = (value[:_PREFIX], len(value))
            _index.setdefault(entry[0], {}).setdefault(entry[1], set()).add(digest)
        _remembered[digest] = entry  # now the newest
        if pin:
            _pinned.add(digest)
        if len(_remembered) - len(_pinned) > _MAX_SECRETS:
            _forget(next(d for d in _remembered if d not in _pinned))


def _shape_redacts(value: str) -> bool:
    """True when the shape rules alone redact every occurrence of ``value`` whole (a JWT, or
    an ``eyJ`` part that is base64url): such values are not registered. Any other value is,
    ``eyJ`` prefix or not — an opaque token or endpoint secret may start that way."""
    return bool(_JWT_RE.fullmatch(value) or _JWT_PART_RE.fullmatch(value))


def _forget(digest: int) -> None:
    prefix, length = _remembered.pop(digest)
    lengths = _index[prefix]
    hashes = lengths[length]
    hashes.discard(digest)
    if not hashes:
        del lengths[length]
        if not lengths:
            del _index[prefix]


def _redact_remembered(text: str) -> str:
    """``text`` with every occurrence of a remembered secret replaced, left to right, the
    longest secret starting at a position first."""
    index = _index
    if not index:
        return text
    pieces: list[str] = []
    kept = 0  # text[kept:pos] is still to be copied
    pos = 0
    end = len(text)
    budget = _SCAN_BUDGET * end + 4096
    while pos <= end - _PREFIX:
        lengths = index.get(text[pos : pos + _PREFIX])
        if lengths is not None:
            budget -= len(lengths)
            if budget < 0:
                return WITHHELD
            for length in sorted(lengths, reverse=True):
                if pos + length <= end and hash(text[pos : pos + length]) in lengths[length]:
                    pieces.append(text[kept:pos])
                    pieces.append(REDACTED)
                    pos = kept = pos + length
                    break
            else:
                pos += 1
            continue
        pos += 1
    if not pieces:
        return text
    pieces.append(text[kept:])
    return "".join(pieces)


REDACT_WINDOW = 16384
"""Characters beyond a cut that are still redacted before it (longer than any secret)."""


def redact_cut(text: str, limit: int) -> str:
    """``text`` redacted, then cut to ``limit`` characters. Redacted before the cut, so that a
    cut cannot split a secret into pieces no rule recognises; but only the first ``limit`` +
    ``REDACT_WINDOW`` characters, so a megabyte of hostile text costs no more than a line."""
    return redact_text(text[: limit + REDACT_WINDOW])[:limit]


def redact_text(text: str) -> str:
    """Replace every remembered secret, and anything shaped like a JWT, a bearer credential or
    a form assertion, with ``[REDACTED]``."""
    # Whole JWTs first, so that one is one [REDACTED] rather than pieces.
    text = _JWT_RE.sub(REDACTED, text)
    text = _redact_remembered(text)
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
    """Routes the standard library's logging (asyncio and httpx use it) through the
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
