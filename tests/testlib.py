"""Shared test support for tests/ and bench/: the real CLI as a subprocess, waiting, configs.

One home for what the suites and the benchmarks both need (bench/benchlib.py imports it, with
tests/ on its path). Nothing here is part of the daemon, and nothing here mocks it:

- **waiting** — ``wait_until`` (and ``wait_until_async`` for a test that runs the daemon on its
  own event loop) polls a predicate until a deadline; the deadline bounds a failure, it is never a
  synchronisation point. A miss raises ``WaitTimeout`` (an ``AssertionError``: the test fails).
- **processes** — ``DaemonProcess`` runs any ``entra-tokend`` command (``run``, ``emulator``...)
  in a subprocess with its output in a file; ``run_cli`` runs one to completion.
- **environments** — ``base_env`` strips what a developer's shell could carry into a child
  (AZURE_*, ENTRA_TOKEND_*, proxies, CA bundles, systemd variables); ``emulator_env`` and
  ``offline_env`` add the settings of the two usual set-ups.
- **configs** — ``write_config`` writes a TOML file from keyword settings and ``[token.NAME]``
  tables; ``STORAGE``, ``VAULT`` and ``GRAPH`` are the scopes the suites use.
- **readers** — ``jwt_claims`` (unverified JWT payload) and the Prometheus text-format readers
  ``samples``, ``sample_names`` and ``sample_value`` (prometheus_client's own parser).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeVar

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
DAEMON_SRC = REPO / "daemon"
T = TypeVar("T")

STORAGE = "https://storage.azure.com/.default"
VAULT = "https://vault.azure.net/.default"
GRAPH = "https://graph.microsoft.com/.default"

# ------------------------------------------------------------------------------------ waiting


class WaitTimeout(AssertionError):
    """A condition polled by ``wait_until`` did not hold before its deadline."""


class _Deadline:
    def __init__(self, timeout: float, what: object) -> None:
        self.timeout = timeout
        self.what = what
        self.end = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() >= self.end:
            raise WaitTimeout(f"timed out after {self.timeout:g} s waiting for {self.what}")


def wait_until(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    *,
    what: str | None = None,
    interval: float = 0.01,
) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns something truthy; return that.

    Raises ``WaitTimeout`` (naming ``what``, else the predicate) when the predicate is still
    falsy at ``timeout`` seconds. The predicate is always called at least once.
    """
    deadline = _Deadline(timeout, what or predicate)
    while not (value := predicate()):
        deadline.check()
        time.sleep(interval)
    return value


async def wait_until_async(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    *,
    what: str | None = None,
    interval: float = 0.01,
) -> T:
    """``wait_until`` for a coroutine: yields to the event loop between polls."""
    deadline = _Deadline(timeout, what or predicate)
    while not (value := predicate()):
        deadline.check()
        await asyncio.sleep(interval)
    return value


# ------------------------------------------------------------------------------- environments

# Variables a developer's shell or CI may carry that would change what a child does.
_STRIPPED_PREFIXES = (
    "AZURE_",
    "ENTRA_TOKEND_",
    "SSL_CERT",
    "REQUESTS_CA_BUNDLE",
    "NOTIFY_SOCKET",
    "WATCHDOG_",
)
_STRIPPED_PROXIES = {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}


def base_env(
    extra: Mapping[str, str] | None = None,
    *,
    daemon_src: Path = DAEMON_SRC,
    pycache: Path | None = None,
) -> dict[str, str]:
    """A clean environment for a child process, then ``extra`` on top.

    Drops the variables in ``_STRIPPED_PREFIXES`` and every proxy variable (either case); puts
    ``daemon_src`` on PYTHONPATH. ``pycache`` makes the child compile bytecode once into that
    directory (PYTHONPYCACHEPREFIX, even where the shell sets PYTHONDONTWRITEBYTECODE) instead
    of the source tree: what the benchmarks want, as an installed package runs from compiled
    bytecode too.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_STRIPPED_PREFIXES) and k.lower() not in _STRIPPED_PROXIES
    }
    env["PYTHONPATH"] = str(daemon_src)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env.update(extra or {})
    return env


class _HasEnv(Protocol):
    def env(self) -> dict[str, str]: ...


def emulator_env(emu: _HasEnv, out: Path, **extra: str) -> dict[str, str]:
    """The daemon's environment against ``emu``: its AZURE_* settings, ``out``, no HTTP port."""
    return {**emu.env(), "ENTRA_TOKEND_OUTPUT_DIR": str(out), "ENTRA_TOKEND_LISTEN": "", **extra}


def write_projected_token(
    path: Path,
    *,
    exp: float | None = None,
    iss: str = "https://issuer.example/cluster",
    sub: str = "system:serviceaccount:default:app",
    aud: str = "api://AzureADTokenExchange",
) -> Path:
    """Write an (unsigned) projected service-account token with these claims to ``path``;
    ``exp`` defaults to an hour from now. Enough for the daemon's checks, which read claims
    and never verify the signature (Entra does)."""
    import base64
    import time

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"iss": iss, "sub": sub, "aud": [aud], "exp": exp or time.time() + 3600}
    path.write_text(f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln")
    return path


def offline_env(tmp_path: Path) -> dict[str, str]:
    """Identity settings that validate but reach nothing: enough for ``check-config``."""
    return {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(write_projected_token(tmp_path / "sa")),
        "ENTRA_TOKEND_OUTPUT_DIR": str(tmp_path / "out"),
        # check-config binds the listen address; the default port may be taken on this host.
        "ENTRA_TOKEND_LISTEN": "127.0.0.1:0",
    }


def tool(name: str, *, env_var: str | None = None) -> str:
    """Path of a required external tool: ``$env_var``, the venv's copy, then PATH.

    Raises AssertionError when it is missing: a check that needs the tool fails, never skips.
    """
    override = os.environ.get(env_var) if env_var else None
    candidates = [Path(override)] if override else []
    candidates.append(Path(sys.executable).parent / name)
    candidates += [Path(d) / name for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    hint = f" or set {env_var} to its path" if env_var else ""
    raise AssertionError(f"{name} is not installed: .ci/run installs it{hint}")


# ------------------------------------------------------------------------------------ configs


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def write_config(
    path: Path,
    tokens: Mapping[str, str] | None = None,
    *,
    body: str = "",
    **settings: object,
) -> Path:
    """Write a TOML config to ``path`` and return ``path``.

    In order: ``settings`` as top-level keys (``listen=""``, ``backoff_max=0.2``...), then
    ``body`` verbatim (more top-level keys, or tables such as ``[identity.x]``), then one
    ``[token.NAME]`` table with ``scope = SCOPE`` per item of ``tokens``.
    """
    lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
    text = "\n".join(lines) + ("\n" if lines else "") + body
    if text and not text.endswith("\n"):
        text += "\n"
    for name, scope in (tokens or {}).items():
        text += f"[token.{name}]\nscope = {_toml(scope)}\n"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------- processes


STATE_DIR = ".entra-tokend-state"


def output_files(directory: Path) -> list[str]:
    """The names in an output_dir, sorted, without the daemon's own state directory (its
    provenance records): what a consumer of the volume sees besides that."""
    return sorted(name for name in os.listdir(directory) if name != STATE_DIR)


def cli(*args: str) -> list[str]:
    """argv for the real CLI."""
    return [sys.executable, "-m", "entra_tokend", *args]


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion (``base_env`` plus ``env``), capturing stdout and stderr."""
    return subprocess.run(
        cli(*args),
        env=base_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit status (-9 if killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class DaemonProcess:
    """An ``entra-tokend`` command in a subprocess, its output (JSON log lines) in ``log_path``.

    ``args`` follow ``python -m entra_tokend`` (``["run", "--config", ...]``); the environment
    is ``base_env(env)`` with ``ENTRA_TOKEND_LOG_FORMAT=json`` unless ``env`` says otherwise.
    ``spawned`` and ``spawned_wall`` are the monotonic and wall-clock times just before spawn.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        daemon_src: Path = DAEMON_SRC,
        pycache: Path | None = None,
    ) -> None:
        self.log_path = log_path
        self._log: IO[str] = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        child_env = base_env(
            {"ENTRA_TOKEND_LOG_FORMAT": "json", **env}, daemon_src=daemon_src, pycache=pycache
        )
        self.spawned_wall = time.time()
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            cli(*args), env=child_env, stdout=self._log, stderr=subprocess.STDOUT, text=True
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def log_text(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """Parsed JSON log lines (every complete line must parse).

        The process may be writing while we read: a last line without its newline is not
        complete yet and is left for the next call.
        """
        complete = self.log_text().split("\n")[:-1]
        return [json.loads(line) for line in complete if line.strip()]

    def _matching(self, event: str, match: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events()
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    def wait_event(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first log event named ``event`` with the given fields; waits for it.

        Fails at once, with the log, if the process exits without logging it.
        """

        def find() -> dict[str, Any] | None:
            exited = self.proc.poll() is not None
            found = self._matching(event, match)
            if found:
                return found[0]
            if exited:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.log_text()}")
            return None

        return wait_until(find, timeout, what=f"log event {event!r} {match or ''}")

    def count(self, event: str, **match: Any) -> int:
        """How many log events match."""
        return len(self._matching(event, match))

    def scrape(self) -> str:
        """GET /metrics (text format) from the port its "listening" log event names."""
        port = int(self.wait_event("listening")["listen"].rpartition(":")[2])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
        return text

    def signal(self, sig: int) -> None:
        """Send a signal."""
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout`` s); returns the exit code."""
        code = stop_process(self.proc, timeout)
        self._log.close()
        return code


# ------------------------------------------------------------------------------------ readers


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (for comparing claims such as ``exp`` with figures)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(scrape: str) -> Samples:
    """``{(sample name, labels): value}`` of a Prometheus text-format scrape."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
    }


def sample_names(scrape: str) -> set[str]:
    """Every sample name (``x_bucket``, ``y_total``...) in a text-format scrape."""
    return {name for name, _ in samples(scrape)}


def sample_value(scrape: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels``; None when there is none."""
    return samples(scrape).get((name, frozenset(labels.items())))
