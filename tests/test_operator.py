"""The operator's side (issue 17): --help, usage hints, config hints, check-config's host checks
(and --offline), run's start-up failures as config lines, the dual-stack listener, the
``run --once`` log."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from entra_tokend import listener
from entra_tokend.config.schema import TOP_LEVEL
from entra_tokend.emulator import Emulator, Fault
from support import (
    STORAGE,
    DaemonProcess,
    emulator_env,
    offline_env,
    run_cli,
    write_projected_token,
)

# ---- CLI ---------------------------------------------------------------------------------


def test_help_shows_defaults_exit_codes_and_examples() -> None:
    main = run_cli("--help", env={"COLUMNS": "200"})
    assert main.returncode == 0
    assert "exit codes:" in main.stdout
    for code in ("  0  success", "  1  run --once", "  2  configuration or usage error"):
        assert code in main.stdout
    assert "examples:" in main.stdout
    assert "check-config --offline" in main.stdout
    run = run_cli("run", "--help", env={"COLUMNS": "200"}).stdout
    # The defaults shown are the daemon's own.
    assert f"default {TOP_LEVEL['output_dir'][1]}" in run
    assert f"default {TOP_LEVEL['listen'][1]}" in run
    assert f"default {int(TOP_LEVEL['once_deadline'][1])}" in run
    assert "--log-format" in run
    assert "log lines as JSON" in run
    assert "least severe log lines shown" in run
    assert "exit codes:" in run
    assert "examples:" in run
    dev = run_cli("dev", "--help", env={"COLUMNS": "200"}).stdout
    assert "Start the local emulator" in dev
    flat = " ".join(dev.split())
    for default in ("(default ./tokens)", "(default 127.0.0.1:9464;", "(default 60)"):
        assert default in flat  # every flag says what it does and its default
    assert "(default ./.entra-tokend-dev)" in flat


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["run", "--outputdir", "x"], "(did you mean '--output-dir'?)"),
        (["chek-config"], "(did you mean 'check-config'?)"),
        (["check-config", "--ofline"], "(did you mean '--offline'?)"),
        (["run", "--log-format", "jsn"], "(did you mean 'json'?)"),
    ],
)
def test_mistyped_flag_or_command_gets_a_suggestion(args: list[str], suggestion: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("entra-tokend: ")
    assert suggestion in lines[0]


def test_unknown_command_without_near_miss_lists_the_commands() -> None:
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "choose from" in result.stderr
    assert "did you mean" not in result.stderr


# ---- configuration hints -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "suggested"),
    [
        ("https://graph.microsoft.com/User.Read", "https://graph.microsoft.com/.default"),
        ("https://vault.azure.net", "https://vault.azure.net/.default"),
        ("api://my-app/access_as_user", "api://my-app/.default"),
    ],
)
def test_scope_without_default_suggests_its_own_resource(
    tmp_path: Path, scope: str, suggested: str
) -> None:
    result = run_cli(
        "check-config", "--offline", "--token", f"a={scope}", env=offline_env(tmp_path)
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"entra-tokend: config: token.a.scope: '{scope}' client-credential flows need "
        f"'<resource>/.default' (did you mean '{suggested}'?)"
    )


def test_unquoted_file_mode_gets_a_hint_to_quote_it(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[token.a]\nscope = "{STORAGE}"\nfile_mode = 0640\n')
    result = run_cli("check-config", "--offline", "--config", str(config))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"entra-tokend: config: config file {config}: invalid TOML:")
    assert 'file_mode = "0640"' in line


# ---- check-config: the host checks run makes ---------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _problems(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert all(line.startswith("entra-tokend: config: ") for line in lines), stderr
    return [line.removeprefix("entra-tokend: config: ") for line in lines]


def test_check_config_reports_every_host_problem_on_one_line_each(
    tmp_path: Path, busy_port: int
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    garbage = tmp_path / "garbage"
    garbage.write_text("not a jwt")
    config = tmp_path / "c.toml"
    config.write_text(
        f'output_dir = "{blocker / "out"}"\nlisten = "127.0.0.1:{busy_port}"\n'
        f'[identity.expired]\ntenant_id = "t"\nclient_id = "c"\n'
        f'token_file = "{write_projected_token(tmp_path / "old", exp=time.time() - 60)}"\n'
        f'[identity.garbage]\ntenant_id = "t"\nclient_id = "c"\ntoken_file = "{garbage}"\n'
        f'ca_file = "{tmp_path / "no-ca.pem"}"\n'
        f'[token.a]\nscope = "{STORAGE}"\nidentity = "expired"\n'
        f'[token.b]\nscope = "{STORAGE}"\nidentity = "garbage"\n'
        f'[token.c]\nscope = "{STORAGE}"\n'
    )
    env = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c"}
    env["AZURE_FEDERATED_TOKEN_FILE"] = str(tmp_path / "missing")
    env["HTTPS_PROXY"] = "ftp://proxy.example:21"
    result = run_cli("check-config", "--config", str(config), env=env)
    assert result.returncode == 2
    problems = _problems(result.stderr)
    # The CA file is a configuration-time check: it is reported before the host checks run.
    assert problems == [
        f"identity.garbage.ca_file: {tmp_path / 'no-ca.pem'} is not a readable file",
        f"output_dir: {blocker / 'out'} cannot be created: a parent is not a directory "
        "(choose another with --output-dir or ENTRA_TOKEND_OUTPUT_DIR)",
    ]

    # With those fixed, the host checks find the rest, all in one run.
    text = config.read_text().replace(f'ca_file = "{tmp_path / "no-ca.pem"}"\n', "")
    config.write_text(text.replace(str(blocker / "out"), str(tmp_path / "a" / "b")))
    result = run_cli("check-config", "--config", str(config), env=env)
    assert result.returncode == 2
    problems = ["", *_problems(result.stderr)]
    assert len(problems) == 6, problems
    assert problems[1].startswith(f"listen: cannot listen on 127.0.0.1:{busy_port}: ")
    assert "--listen or ENTRA_TOKEND_LISTEN; '' disables" in problems[1]
    assert problems[2].startswith("HTTPS_PROXY (or ALL_PROXY): not a usable proxy URL")
    assert problems[3].startswith("identity.default.token_file (AZURE_FEDERATED_TOKEN_FILE): ")
    assert "does not exist" in problems[3]
    assert problems[4].startswith("identity.expired.token_file: ")
    assert "expired" in problems[4]
    assert problems[5].startswith("identity.garbage.token_file: ")
    assert result.stdout == ""


def test_check_config_prints_what_the_host_checks_found(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    write_projected_token(
        Path(env["AZURE_FEDERATED_TOKEN_FILE"]),
        iss="https://oidc.example/abc",
        sub="system:serviceaccount:ns:sa",
        aud="api://AzureADTokenExchange",
    )
    env["NO_PROXY"] = "good.example,bad/entry/x"
    result = run_cli("check-config", "--token", f"a={STORAGE}", "--listen", "[::]:0", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "# host checks:" in out
    assert "output_dir: " in out
    assert "does not exist yet; run creates it" in out
    assert "with mode 0750" in out
    listen = next(line for line in out.splitlines() if line.startswith("#   listen: "))
    assert "can be bound" in listen
    assert (
        "projected token iss=https://oidc.example/abc sub=system:serviceaccount:ns:sa "
        "aud=api://AzureADTokenExchange; expires " in out
    )
    assert "NO_PROXY: entry 'bad/entry/x' is not a host" in out
    assert 'listen = "[::]:0"' in out


def test_check_config_notes_a_running_daemon_instead_of_failing(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Before a reload, check-config meets the running daemon's lock and port: not errors."""
    out = tmp_path / "out"
    env = emulator_env(emulator, out, ENTRA_TOKEND_LISTEN="127.0.0.1:0")
    daemon = DaemonProcess(["run", "--token", f"a={STORAGE}"], env, tmp_path / "log")
    try:
        daemon.wait_event("token written")
        result = run_cli("check-config", "--token", f"a={STORAGE}", env=env)
    finally:
        daemon.stop()
    assert result.returncode == 0, result.stderr
    assert "is in use by a running entra-tokend" in result.stdout


def test_offline_checks_only_the_files(tmp_path: Path, busy_port: int) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "missing"),
        "ENTRA_TOKEND_OUTPUT_DIR": str(blocker / "out"),
        "ENTRA_TOKEND_LISTEN": f"127.0.0.1:{busy_port}",
    }
    config = tmp_path / "c.toml"
    config.write_text(
        f'[identity.default]\nca_file = "{tmp_path / "no-ca.pem"}"\n'
        f'[token.a]\nscope = "{STORAGE}"\n'
    )
    result = run_cli("check-config", "--offline", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "# offline: output_dir, listen, projected tokens and CA files not checked" in (
        result.stdout
    )
    # ...but a bad file still fails offline.
    config.write_text('[token.a]\nscope = "https://storage.azure.com"\n')
    result = run_cli("check-config", "--offline", "--config", str(config), env=env)
    assert result.returncode == 2


# ---- run: start-up failures in the config format -----------------------------------------


def test_run_start_up_failures_name_the_flag_that_fixes_them(
    emulator: Emulator, tmp_path: Path, busy_port: int
) -> None:
    env = emulator_env(emulator, tmp_path / "out", ENTRA_TOKEND_LISTEN=f"127.0.0.1:{busy_port}")
    result = run_cli("run", "--token", f"a={STORAGE}", env=env)
    assert result.returncode == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("entra-tokend: config: ")]
    assert lines == [
        f"entra-tokend: config: listen: cannot listen on 127.0.0.1:{busy_port}: Address already "
        "in use (change it with --listen or ENTRA_TOKEND_LISTEN; '' disables the listener)"
    ]
    # output_dir held by another daemon: found only when run takes the lock.
    out = tmp_path / "out"
    env = emulator_env(emulator, out)
    daemon = DaemonProcess(["run", "--token", f"a={STORAGE}"], env, tmp_path / "log")
    try:
        daemon.wait_event("token written")
        result = run_cli("run", "--token", f"a={STORAGE}", env=env)
    finally:
        daemon.stop()
    assert result.returncode == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("entra-tokend: config: ")]
    assert lines == [
        f"entra-tokend: config: output_dir: {out} is in use by another entra-tokend "
        f"(pid {daemon.pid}); give each daemon its own directory with --output-dir or "
        "ENTRA_TOKEND_OUTPUT_DIR"
    ]


# ---- the dual-stack listener -------------------------------------------------------------


def test_default_listen_is_dual_stack() -> None:
    assert TOP_LEVEL["listen"][1] == "[::]:9464"
    with listener.bind_listener("::", 0) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        port = sock.getsockname()[1]
        assert listener.listening_text(sock) == f"[::]:{port}"
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as client:
                client.connect((host, port))  # both families reach the one socket


def test_listen_falls_back_to_ipv4_without_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without IPv6 (ipv6.disable=1) fails socket(AF_INET6) with EAFNOSUPPORT; the
    kernel cannot be switched here, so that one call is made to fail as it would."""
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object, **kwargs: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real(family, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("entra_tokend.listener.socket.socket", no_ipv6)
    with listener.bind_listener("::", 0) as sock:
        assert sock.family == socket.AF_INET
        assert listener.listening_text(sock).startswith("0.0.0.0:")


def test_daemon_logs_its_ipv6_listen_address_in_brackets(
    emulator: Emulator, tmp_path: Path
) -> None:
    env = emulator_env(emulator, tmp_path / "out", ENTRA_TOKEND_LISTEN="[::1]:0")
    daemon = DaemonProcess(["run", "--token", f"a={STORAGE}"], env, tmp_path / "log")
    try:
        assert daemon.wait_event("listening")["listen"].startswith("[::1]:")
    finally:
        daemon.stop()


# ---- run --once --------------------------------------------------------------------------


def test_once_logs_no_next_refresh(emulator: Emulator, tmp_path: Path) -> None:
    result = run_cli(
        "run", "--once", "--token", f"a={STORAGE}", env=emulator_env(emulator, tmp_path / "out")
    )
    assert result.returncode == 0, result.stderr
    written = [json.loads(x) for x in result.stderr.splitlines() if "token written" in x]
    assert len(written) == 1
    assert "next_refresh_in" not in written[0]


def test_once_deadline_repeats_each_missing_tokens_last_failure(
    emulator: Emulator, tmp_path: Path
) -> None:
    emulator.inject(Fault("status", status=500, count=10_000))
    result = run_cli(
        "run",
        "--once",
        "--deadline",
        "1.5",
        "--token",
        f"a={STORAGE}",
        env=emulator_env(emulator, tmp_path / "out"),
    )
    assert result.returncode == 1
    (line,) = [json.loads(x) for x in result.stderr.splitlines() if "deadline reached" in x]
    assert line["missing"] == ["a"]
    assert line["last_failure"]["a"].startswith("server_error")
