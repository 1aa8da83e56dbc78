"""What ``run`` meets when it starts, checked without keeping anything: output_dir's lock,
the listen addresses, proxy variables, each identity's projected token."""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import urlsplit

from entra_tokend.assertion import AssertionUnavailable, check_unexpired, read_assertion
from entra_tokend.config import Config
from entra_tokend.config.schema import DEFAULT_IDENTITY, IDENTITY_ENV
from entra_tokend.exchange.proxy import ProxySettings
from entra_tokend.listener import address_text, bind_listener, listening_text
from entra_tokend.lock import DirectoryLock, LockError, LockHeld
from entra_tokend.preflight import files
from entra_tokend.preflight.lines import Findings, listen_problem, output_dir_problem


def default_trust(env: Mapping[str, str]) -> str:
    """How check-config words the trust of an identity without a CA setting: the CA variables
    the daemon's TLS contexts read (``SSL_CERT_FILE``, ``SSL_CERT_DIR``), else certifi's."""
    found = [f"{name} {env[name]}" for name in ("SSL_CERT_FILE", "SSL_CERT_DIR") if env.get(name)]
    return "trusting " + " and ".join(found) if found else "default trust store (certifi)"


def check_output_dir(config: Config, found: Findings) -> bool:
    """Can ``run`` create (or use) and lock output_dir? Creates nothing. Returns True when a
    running entra-tokend holds it (so its listeners are expected to be in use)."""
    path = config.output_dir
    problem, note = files.output_dir(path)
    if problem is not None:
        found.problems.append(problem)
        return False
    if not path.exists():
        found.notes.append(str(note))
        return False
    try:
        DirectoryLock.acquire(path).release()
    except LockHeld as exc:
        holder = f" (pid {exc.pid})" if exc.pid else ""
        found.notes.append(f"output_dir: {path} is in use by a running entra-tokend{holder}")
        return True
    except (LockError, OSError) as exc:
        found.problems.append(output_dir_problem(path, exc))
        return False
    found.notes.append(f"{note}; token files get mode {config.file_mode:04o}")
    return False


def check_listeners(config: Config, found: Findings, *, in_use_ok: bool = False) -> None:
    """Bind and close every configured listener (metrics/health and ``[endpoint]``).

    ``in_use_ok``: a running entra-tokend holds output_dir, so "address in use" is expected
    (it is that daemon's listener) and noted rather than reported.
    """
    listeners = [("listen", config.listen)]
    if config.endpoint is not None:
        listeners.append(("endpoint.listen", config.endpoint.listen))
    for key, address in listeners:
        if address is None:
            found.notes.append(f"{key}: disabled")
            continue
        host, port = address
        try:
            sock = bind_listener(host, port)
        except OSError as exc:
            if in_use_ok and exc.errno == errno.EADDRINUSE:
                found.notes.append(
                    f"{key}: {address_text(host, port)} is in use (by the running entra-tokend?)"
                )
            else:
                found.problems.append(listen_problem(key, host, port, exc))
            continue
        with sock:
            bound = listening_text(sock)
            stack = " (IPv6 and IPv4)" if sock.family == socket.AF_INET6 and host == "::" else ""
            found.notes.append(f"{key}: {bound}{stack} can be bound")


def check_proxies(env: Mapping[str, str], found: Findings) -> ProxySettings:
    """Proxy variables: each proxy URL must be one httpx accepts; unusable NO_PROXY entries
    (skipped at run time) are noted. URLs are shown without user information (a password)."""
    import httpx  # noqa: PLC0415 - only when checking proxies

    settings = ProxySettings.from_env(env)
    for name, url in (("HTTPS_PROXY", settings.https), ("HTTP_PROXY", settings.http)):
        if url is None:
            continue
        try:
            proxy = httpx.Proxy(url)
            urlsplit(url).port  # noqa: B018 - raises ValueError for a port beyond 65535
            if "[" in urlsplit(url).netloc and "]" not in urlsplit(url).netloc:
                raise ValueError("unbalanced bracket")
        except (ValueError, httpx.InvalidURL):
            scheme = url.partition("://")[0] if "://" in url else "(none)"
            found.problems.append(
                f"{name} (or ALL_PROXY): not a usable proxy URL (scheme {scheme!r}; use "
                "http://HOST:PORT, https://, socks5:// or socks5h://)"
            )
            continue
        if proxy.url.scheme.startswith("socks"):
            import importlib.util  # noqa: PLC0415

            if importlib.util.find_spec("socksio") is None:
                found.problems.append(
                    f"{name} (or ALL_PROXY): a SOCKS proxy needs the socksio package "
                    "(pip install 'httpx[socks]')"
                )
                continue
        found.notes.append(f"{name}: {proxy.url.scheme}://{proxy.url.netloc.decode()}")
    for entry in settings.unusable:
        found.notes.append(f"NO_PROXY: entry {entry!r} is not a host, domain, IP or CIDR; skipped")
    return settings


def check_projected_tokens(config: Config, found: Findings, now: float) -> None:
    """Each identity's projected token: present, a JWT, unexpired; its claims as notes."""
    for ident in config.identities.values():
        key = f"identity.{ident.name}.token_file"
        if ident.name == DEFAULT_IDENTITY:
            key += f" ({IDENTITY_ENV['token_file']})"
        try:
            assertion = read_assertion(ident.token_file)
            check_unexpired(assertion, now, ident.token_file)
        except AssertionUnavailable as exc:
            found.problems.append(f"{key}: {exc}")
            continue
        if assertion.expires_on is None:
            expiry = "no exp claim"
        else:
            when = datetime.fromtimestamp(assertion.expires_on, UTC).isoformat()
            expiry = f"expires {when} (in {int(assertion.expires_on - now)} s)"
        aud = ", ".join(assertion.aud) or "(none)"
        found.notes.append(
            f"identity.{ident.name}: projected token iss={assertion.iss} sub={assertion.sub} "
            f"aud={aud}; {expiry} (Entra matches iss, sub and aud against the federated "
            "credential: AADSTS70021 when none matches)"
        )


def startup_checks(config: Config, env: Mapping[str, str]) -> list[str]:
    """The checks ``run`` makes before it starts that are not made by preparing output_dir or
    binding: proxy settings. One problem line each."""
    found = Findings()
    check_proxies(env, found)
    return found.problems


def check_host(config: Config, env: Mapping[str, str], now: float) -> Findings:
    """Everything ``check-config`` asks the host, without keeping anything (see module)."""
    found = Findings()
    running = check_output_dir(config, found)
    check_listeners(config, found, in_use_ok=running)
    check_proxies(env, found)
    check_projected_tokens(config, found, now)
    return found
