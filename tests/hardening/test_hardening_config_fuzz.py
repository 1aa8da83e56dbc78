"""Property-based fuzzing of the configuration loader.

Any TOML document, any environment and any command-line overrides give a Config or a
ConfigError listing problems — never another exception (an operator must never see a
traceback for a typo) — both from the pure loader alone (``check-config --offline``) and with
the host checks (``run``, ``check-config``). A Config that comes out also renders for
`check-config` and keeps the invariants the sink relies on.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from entra_tokend import preflight
from entra_tokend.config import Config, ConfigError, Overrides, load_config, render_config
from entra_tokend.config.schema import (
    ENV_CONFIG,
    ENV_LISTEN,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    ENV_OUTPUT_DIR,
    ENV_TOKENS,
    HOOK_KEYS,
    IDENTITY_ENV,
    IDENTITY_KEYS,
    POLICY_KEYS,
    TOKEN_KEYS,
    TOP_LEVEL,
)
from entra_tokend.model import LOCK_NAME, is_temp_name
from testlib import STORAGE

# ---- a TOML writer for arbitrary values (tomllib only reads) -----------------------------


def toml_str(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_str(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(doc: dict[str, Any]) -> str:
    return "".join(f"{toml_str(k)} = {toml_value(v)}\n" for k, v in doc.items())


# ---- strategies ---------------------------------------------------------------------------

texts = st.text(max_size=24)
scalars = st.one_of(
    texts,
    st.integers(),  # unbounded: TOML integers may exceed a float's range
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
names = st.one_of(st.sampled_from(["a", "default", "kv", "b.c", "x-1"]), texts)
path_texts = st.one_of(
    st.sampled_from(["a", "sub/a", "../a", "/etc/a", ".", "", LOCK_NAME, "a\x00b"]),
    st.builds(lambda n: f".a.entra-tokend-{n:016x}.tmp", st.integers(0, 2**64 - 1)),
    texts,
)


def maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values (so validation gets deep), sometimes anything at all."""
    return st.one_of(good, good, anything)


HOOK_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "exec": maybe(st.lists(st.sampled_from(["/bin/true", "", "a\x00b", "x"]), max_size=3)),
    "timeout": maybe(st.one_of(st.floats(), st.integers())),
    "pid_file": maybe(path_texts),
    "signal": maybe(
        st.one_of(st.sampled_from(["HUP", "sigusr1", "KILL", "SIG", "nope"]), st.integers())
    ),
}
hook_tables = st.fixed_dictionaries({}, optional={**HOOK_FIELDS, "extra": anything})
TOKEN_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "scope": maybe(st.sampled_from([STORAGE, "/.default", "a b/.default", ""])),
    "identity": maybe(names),
    "path": maybe(path_texts),
    "format": maybe(
        st.sampled_from(["raw", "json", "xml", "header", "env", "template", "docker-config"])
    ),
    "hook": maybe(hook_tables),
    "file_mode": maybe(st.sampled_from(["0600", "0666", "0200", "x", 0o640, 1 << 70])),
    "file_owner": maybe(st.sampled_from(["root", "no-such-user", "a\x00b", 0, -1, 2**40])),
    "file_group": maybe(st.sampled_from(["root", "no-such-group", "", 0, 2**32 - 1])),
    "env_name": maybe(st.sampled_from(["PGPASSWORD", "1X", "A-B", "", "ok_1"])),
    "env_expires_name": maybe(st.sampled_from(["EXP", "PGPASSWORD", "$X"])),
    "template": maybe(st.sampled_from(["$access_token", "${nope}", "$", "$$ ${scope}", "a\x00"])),
    "template_file": maybe(path_texts),
    "registry": maybe(
        st.one_of(
            st.sampled_from(["r.azurecr.io", "http://127.0.0.1:5000", "http://r.io", "a/b", ""]),
            st.lists(st.sampled_from(["r.azurecr.io", "x.azurecr.cn:443", "[::1]:1"])),
        )
    ),
}
token_tables = st.fixed_dictionaries({}, optional=TOKEN_FIELDS)
IDENTITY_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "tenant_id": maybe(st.sampled_from(["t", "contoso.onmicrosoft.com", "-x", "a/b"])),
    "client_id": maybe(st.sampled_from(["c", ""])),
    "token_file": maybe(path_texts),
    "authority_host": maybe(
        st.sampled_from(
            ["https://login.example", "http://127.0.0.1:1", "http://x", "https://[::1", "ftp:"]
        )
    ),
    "ca_file": maybe(path_texts),
    "token_proxy": maybe(
        st.sampled_from(
            ["https://10.0.0.1/ib", "http://10.0.0.1", "https://u:p@x", "https://x/?q", "x"]
        )
    ),
    "token_proxy_sni_name": maybe(st.sampled_from(["ib.aks.local", "a b", ""])),
    "token_proxy_ca_file": maybe(path_texts),
    "token_proxy_ca_data": maybe(st.sampled_from(["", "x", "-----BEGIN CERTIFICATE-----\n"])),
    "object_id": maybe(st.sampled_from(["", "x", "00000000-0000-0000-0000-000000000000"])),
    "resource_id": maybe(st.sampled_from(["", "/subscriptions/s/resourceGroups/g/providers/p"])),
}
identity_tables = st.fixed_dictionaries({}, optional=IDENTITY_FIELDS)
owners = st.one_of(
    st.sampled_from(["root", "nobody", "0", "65534", "no-such-user", "a\x00b", ""]),
    st.integers(),
)
top_values: dict[str, st.SearchStrategy[Any]] = {
    "output_dir": maybe(path_texts),
    "listen": maybe(st.sampled_from(["", "127.0.0.1:0", "[::1]:9", ":99999", "x"])),
    "file_mode": maybe(st.one_of(st.sampled_from(["0640", "0o600", "777", "x"]), st.integers())),
    "file_owner": maybe(owners),
    "file_group": maybe(owners),
    "hook": maybe(hook_tables),
    "token": maybe(st.dictionaries(names, maybe(token_tables), max_size=3)),
    "identity": maybe(st.dictionaries(names, maybe(identity_tables), max_size=2)),
    "unknown_key": anything,
}
for _key, (_typ, _default) in TOP_LEVEL.items():
    top_values.setdefault(_key, maybe(st.one_of(st.floats(), st.integers(), st.booleans())))
documents = st.fixed_dictionaries({}, optional=top_values)

ENV_VARS = [
    ENV_TOKENS,
    ENV_OUTPUT_DIR,
    ENV_LISTEN,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    *IDENTITY_ENV.values(),
]
# What a real environment can hold: any bytes but NUL, decoded as Python decodes os.environ
# (invalid UTF-8 becomes lone surrogates by surrogateescape).
env_texts = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    st.binary(max_size=40).map(lambda b: os.fsdecode(b.replace(b"\x00", b""))),
)
environments = st.dictionaries(
    st.sampled_from(ENV_VARS),
    st.one_of(
        env_texts,
        st.sampled_from([f"a={STORAGE}", f"a={STORAGE},b", "t", "https://[::1", "/tmp"]),
    ),
)
override_tokens = st.lists(st.one_of(st.just(f"a={STORAGE}"), env_texts), max_size=2)


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cfgfuzz-") as d:
        yield Path(d)


def check(doc_text: str, env: dict[str, str], tokens: list[str], directory: Path) -> None:
    """The property: a Config (with its invariants) or a ConfigError; nothing else."""
    source = directory / "config.toml"
    source.write_text(doc_text, encoding="utf-8")
    env = {**env, ENV_CONFIG: str(source)}
    for offline in (True, False):
        try:
            if offline:
                config = load_config(Overrides(tokens=tokens), env, offline=True)
            else:
                config = preflight.load(Overrides(tokens=tokens), env)
        except ConfigError as exc:
            problems = exc.problems
            assert problems
            assert all(isinstance(line, str) and line for line in problems)
            continue
        assert offline or config.resolved
        check_invariants(config, offline=offline)


def check_invariants(config: Config, *, offline: bool) -> None:
    """What the sink relies on, in any Config the loader lets out."""
    assert isinstance(config, Config)
    assert config.tokens
    assert not config.file_mode & 0o002
    for spec in config.tokens.values():
        assert spec.path.is_relative_to(config.output_dir)
        assert spec.path != config.output_dir
        assert "\x00" not in str(spec.path)
        # a token must never be named like our lock or our temp files
        assert spec.path.name != LOCK_NAME
        assert not is_temp_name(spec.path.name)
        if spec.hook is not None:
            assert math.isfinite(spec.hook.timeout)
            assert spec.hook.timeout > 0
    for value in (config.file_owner, config.file_group):
        assert value is None or 0 <= value < 2**32 - 1
    numbers = [
        getattr(config.policy if k in POLICY_KEYS else config, k)
        for k, (t, _) in TOP_LEVEL.items()
        if t == (int, float)
    ]
    assert all(math.isfinite(n) for n in numbers)
    assert render_config(config, offline=offline)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=documents, env=environments, tokens=override_tokens)
# Crashes this fuzzer found (kept as regression examples):
@example(doc={"refresh_at": 10**400}, env={}, tokens=[f"a={STORAGE}"])
@example(doc={"token": {"a": 5}}, env={}, tokens=[f"a={STORAGE}"])
@example(doc={"file_owner": "a\x00b"}, env={}, tokens=[f"a={STORAGE}"])
@example(doc={"output_dir": "a\x00b"}, env={}, tokens=[f"a={STORAGE}"])
@example(doc={}, env={"AZURE_AUTHORITY_HOST": "https://[::1"}, tokens=[f"a={STORAGE}"])
@example(doc={"hook": {"exec": ["x"], "timeout": 10**400}}, env={}, tokens=[f"a={STORAGE}"])
@example(doc={"hook": {"exec": ["x"], "signal": 40}}, env={}, tokens=[f"a={STORAGE}"])
def test_any_configuration_gives_config_or_config_error(
    fuzz_dir: Path, doc: dict[str, Any], env: dict[str, str], tokens: list[str]
) -> None:
    full_env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_FEDERATED_TOKEN_FILE": str(fuzz_dir / "sa-token"),
        ENV_OUTPUT_DIR: str(fuzz_dir / "out"),
        **env,
    }
    check(toml_document(doc), full_env, tokens, fuzz_dir)


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_file_bytes_give_config_or_config_error(fuzz_dir: Path, raw: bytes) -> None:
    source = fuzz_dir / "raw.toml"
    source.write_bytes(raw)
    env = {ENV_CONFIG: str(source), ENV_TOKENS: f"a={STORAGE}", ENV_OUTPUT_DIR: str(fuzz_dir)}
    env.update(AZURE_TENANT_ID="t", AZURE_CLIENT_ID="c", AZURE_FEDERATED_TOKEN_FILE="/x")
    try:
        preflight.load(Overrides(), env)
    except ConfigError as exc:
        problems = exc.problems
        assert problems


def test_writer_round_trips_through_tomllib() -> None:
    """The fuzzer's own TOML writer must say what it means, or the fuzzing proves little."""
    import tomllib

    doc = {"a b": ['\x00"\\', 1, -0.5, True, {"k": math.inf}], "n": 10**30}
    assert tomllib.loads(toml_document(doc)) == doc


def test_keys_the_fuzzer_knows_match_the_loader() -> None:
    """If the loader grows a key, the fuzzer must learn it (or this fails)."""
    assert set(top_values) - {"hook", "token", "identity", "unknown_key"} == set(TOP_LEVEL)
    assert set(TOKEN_FIELDS) == set(TOKEN_KEYS)
    assert set(IDENTITY_FIELDS) == set(IDENTITY_KEYS)
    assert set(HOOK_FIELDS) == set(HOOK_KEYS)
