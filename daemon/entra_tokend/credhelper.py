"""``docker-credential-entra-tokend``: the docker credential-helper protocol over the daemon's
docker config, so a user-owned ``config.json`` keeps its own ``auths`` and ``credHelpers``.

The daemon writes ``format = "docker-config"`` files it owns whole (every refresh replaces
them). A user who also logs in to other registries points the registries the daemon serves at
this helper instead::

    {"auths": {"other.example.com": {...}},
     "credHelpers": {"myregistry.azurecr.io": "entra-tokend"}}

and the docker CLI, skopeo/podman/buildah (containers-auth.json(5)), crane, oras and helm run
``docker-credential-entra-tokend get`` for those registries. The helper only *reads* what the
daemon wrote: ``ENTRA_TOKEND_DOCKER_CONFIG`` names the daemon's file (several separated by
``:``), default ``/run/entra-tokend/docker/config.json``.

The protocol (docker/docker-credential-helpers, ``credentials/credentials.go``): the action is
the only argument; ``get`` reads the server URL on stdin and prints
``{"ServerURL", "Username", "Secret"}``; ``list`` prints ``{server URL: user name}``; errors are
one line on stdout with exit status 1, and the exact text
``credentials not found in native keychain`` means "no credentials" (clients compare it and
fall back to anonymous access). ``store`` and ``erase`` are refused: the daemon owns these
credentials. An expired refresh token (its ``exp`` claim) is "not found", never served.

Nothing here logs: the secret goes to stdout only in ``get``'s answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from entra_tokend import __version__
from entra_tokend.util.files import FileTooLarge, read_regular
from entra_tokend.util.jwt import decode_claims

ENV_DOCKER_CONFIG = "ENTRA_TOKEND_DOCKER_CONFIG"
DEFAULT_DOCKER_CONFIG = "/run/entra-tokend/docker/config.json"
NOT_FOUND = "credentials not found in native keychain"
"""The protocol's "no credentials" text (docker-credential-helpers ``ErrCredentialsNotFound``),
compared verbatim by the docker CLI and containers/image."""
MAX_CONFIG_BYTES = 1024 * 1024
"""A docker config larger than this is not the daemon's (it holds one short entry per registry)."""
MAX_URL_BYTES = 4096
"""The most of stdin ``get`` reads: a server URL."""


class HelperError(Exception):
    """A failure to report on stdout (exit 1). Its text names files and registries only."""


_AUTHORITY = re.compile(
    r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?"
)


def registry_host(server_url: str) -> str:
    """The ``host[:port]`` of a server URL as docker passes it (``https://h/v1/``, ``h``,
    ``h:5000``), lower-cased. Only a plain host name, IPv4 or bracketed IPv6 address and an
    optional port are accepted: user info (``a@b``), backslashes and %-escapes are refused, so
    no spelling another parser reads as a different host can select a credential. Raises
    HelperError for an empty or malformed one."""
    text = server_url.strip()
    if not text:
        raise HelperError("no credentials server URL")
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
            break
    authority = text.partition("/")[0]
    if not _AUTHORITY.fullmatch(authority):
        raise HelperError("malformed credentials server URL")
    host, _, port = (
        authority.rpartition(":") if not authority.endswith("]") else (authority, "", "")
    )
    if not host or "]" in port:
        host, port = authority, ""
    if port and not 0 < int(port) < 65536:
        raise HelperError("malformed credentials server URL")
    return authority.lower()


def config_paths(environ: Mapping[str, str]) -> list[Path]:
    """The daemon's docker config files the helper reads, in order."""
    value = environ.get(ENV_DOCKER_CONFIG) or DEFAULT_DOCKER_CONFIG
    return [Path(p) for p in value.split(":") if p]


def _load(path: Path) -> dict[str, Any]:
    """The ``auths`` object of one daemon docker config; {} when the file does not exist yet.
    Raises HelperError for a file that cannot be the daemon's."""
    try:
        data = read_regular(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        return {}
    except FileTooLarge:
        raise HelperError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes") from None
    except OSError as exc:
        raise HelperError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        doc = json.loads(data)
    except ValueError:
        raise HelperError(f"{path} is not a docker config (invalid JSON)") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        raise HelperError(f"{path} is not a docker config (no auths object)")
    return auths


def _decode(entry: Any) -> tuple[str, str] | None:
    """(user name, secret) of an ``auths`` entry, or None when it holds none."""
    auth = entry.get("auth") if isinstance(entry, dict) else None
    if not isinstance(auth, str):
        return None
    try:
        user, sep, secret = base64.b64decode(auth, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, secret) if sep and secret else None


def expired(secret: str, now: float) -> bool:
    """True when ``secret`` is a JWT whose ``exp`` claim has passed (or is not a finite
    number). An opaque secret carries no expiry: the daemon replaces it before it ends."""
    if secret.count(".") != 2:
        return False
    try:
        exp = decode_claims(secret).get("exp")
    except ValueError:
        return False
    if exp is None:
        return False
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return True
    return bool(exp <= now)


def credentials(environ: Mapping[str, str], now: float) -> dict[str, tuple[str, str]]:
    """Every unexpired ``host → (user name, secret)`` the daemon's files hold (the first file
    that names a host wins). Raises HelperError."""
    found: dict[str, tuple[str, str]] = {}
    for path in config_paths(environ):
        for server, entry in _load(path).items():
            try:
                host = registry_host(str(server))
            except HelperError:
                continue
            pair = _decode(entry)
            if pair is not None and host not in found and not expired(pair[1], now):
                found[host] = pair
    return found


def get(server_url: str, environ: Mapping[str, str], now: float) -> dict[str, str]:
    """The protocol's ``get`` answer for ``server_url``. Raises HelperError (``NOT_FOUND``
    for a registry the daemon holds no unexpired credential for)."""
    host = registry_host(server_url)
    pair = credentials(environ, now).get(host)
    if pair is None:
        raise HelperError(NOT_FOUND)
    return {"ServerURL": server_url.strip(), "Username": pair[0], "Secret": pair[1]}


def run(
    argv: Sequence[str], stdin: TextIO, stdout: TextIO, environ: Mapping[str, str], now: float
) -> int:
    """One helper invocation; returns the exit status (0, or 1 with the error on stdout)."""
    action = argv[0] if len(argv) == 1 else ""
    try:
        if action == "get":
            answer: object = get(stdin.read(MAX_URL_BYTES), environ, now)
        elif action == "list":
            answer = {host: pair[0] for host, pair in credentials(environ, now).items()}
        elif action in ("store", "erase"):
            raise HelperError(
                f"{action} is not supported: entra-tokend writes these credentials itself; "
                "use `docker login` only for registries not listed in credHelpers"
            )
        elif action == "version":
            stdout.write(f"docker-credential-entra-tokend {__version__}\n")
            return 0
        else:
            raise HelperError("usage: docker-credential-entra-tokend get|list|store|erase|version")
    except HelperError as exc:
        stdout.write(f"{exc}\n")
        return 1
    json.dump(answer, stdout)
    stdout.write("\n")
    return 0


def main() -> None:
    """Console-script entry point ``docker-credential-entra-tokend``."""
    sys.exit(run(sys.argv[1:], sys.stdin, sys.stdout, os.environ, time.time()))


if __name__ == "__main__":
    main()
