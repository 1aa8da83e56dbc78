"""Templates over several tokens (``[file.NAME]``) and token claims in templates, in process:
the language's checks, claims read from a JWT, the consumer of runner events rendering (or
keeping the old file on a render error at reload), and config errors naming the key (exit 2)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import tomllib
from pathlib import Path

import pytest

from entra_tokend import exposition
from entra_tokend.metrics import Metrics
from entra_tokend.model import AccessToken, FileSpec, OutputSpec, Policy, SystemClock
from entra_tokend.outputs import FileOutput, ProvenanceStore, WriteError, multi, renderer_for
from entra_tokend.outputs import template as template_format
from entra_tokend.outputs.claims import MissingClaim, claim_values
from entra_tokend.ports import Expired, Written
from entra_tokend.readiness import Readiness
from entra_tokend.runner import Deps
from entra_tokend.templatefiles import TemplateFiles
from support import offline_env, run_cli, write_config

STORAGE = "https://storage.azure.com/.default"
VAULT = "https://vault.azure.net/.default"
OID = "6f0c7d5e-1111-2222-3333-444455556666"


def jwt(**claims: object) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def token(value: str, scope: str = STORAGE, expires_on: float | None = None) -> AccessToken:
    return AccessToken(
        token=value,
        token_type="Bearer",
        expires_in=3600,
        expires_on=expires_on or time.time() + 3600,
        refresh_in=None,
        scope=scope,
        request_id="r",
    )


# ---- the language --------------------------------------------------------------------------


def test_check_names_unknown_tokens_and_fields_and_returns_the_tokens_named() -> None:
    tokens = ["storage", "kv.prod-1"]
    assert multi.check("$storage.access_token ${kv.prod-1.oid} $$", tokens) == (
        [],
        ["storage", "kv.prod-1"],
    )
    problems, _ = multi.check("${graph.access_token} ${storage.nope}", tokens)
    assert problems == [
        "unknown token 'graph' in ${graph.access_token} (tokens: kv.prod-1, storage)",
        f"unknown field 'nope' in ${{storage.nope}} (fields: {', '.join(template_format.FIELDS)})",
    ]
    (problem,), _ = multi.check("cost: $5 or $storage", tokens)
    assert problem.startswith("template syntax error")
    assert multi.check(" \n", tokens)[0][0].startswith("is empty;")


def test_render_substitutes_each_tokens_fields_and_claims_and_nothing_else() -> None:
    tokens = {
        "storage": token(jwt(oid=OID, tid="t-1", azp="app-2", aud=["a", "b"], exp=5, iat=4)),
        "vault": token("opaque-vault-token", VAULT, expires_on=1_800_000_000),
    }
    text = (
        "U=${storage.oid} T=$storage.tid A=$storage.appid Z=$storage.azp AUD=$storage.aud "
        "E=$storage.exp I=$storage.iat\nV=${vault.access_token} $vault.expires_on "
        "${vault.expires_on_rfc3339} $vault.resource $$HOME ${HOME}"
    )
    with pytest.raises(ValueError, match="Invalid placeholder"):  # ${HOME} names no token
        multi.render(text, tokens)
    text = text.replace(" ${HOME}", "")
    assert multi.render(text, tokens).decode() == (
        f"U={OID} T=t-1 A=app-2 Z=app-2 AUD=a,b E=5 I=4\nV=opaque-vault-token 1800000000 "
        "2027-01-15T08:00:00Z https://vault.azure.net $HOME"
    )


def test_a_claim_an_opaque_token_lacks_or_an_unsafe_claim_is_missing() -> None:
    with pytest.raises(MissingClaim, match="not a JWT"):
        claim_values(token("opaque"), ["oid"])
    with pytest.raises(MissingClaim, match="'tid'"):
        claim_values(token(jwt(oid=OID)), ["oid", "tid"])
    with pytest.raises(MissingClaim, match="spaces"):
        claim_values(token(jwt(oid="x\nINJECTED=1")), ["oid"])
    assert claim_values(token("opaque"), []) == {}  # not decoded when no claim is used


def test_single_token_template_reaches_claims() -> None:
    spec = OutputSpec(path=Path("/x"), format="template", template="user=$oid tenant=$tid")
    render = renderer_for(spec)
    assert render(token(jwt(oid=OID, tid="t-9"))) == f"user={OID} tenant=t-9".encode()
    with pytest.raises(MissingClaim):
        render(token("opaque"))


def test_a_token_file_whose_template_needs_a_missing_claim_is_not_written(
    tmp_path: Path,
) -> None:
    spec = OutputSpec(path=tmp_path / "t", format="template", template="user=$oid")
    output = FileOutput(
        spec, tmp_path, name="t", print_={"p": "p"}, store=ProvenanceStore(tmp_path)
    )
    with pytest.raises(WriteError) as caught:
        asyncio.run(output.deliver(token("SECRET-opaque-value")))
    assert caught.value.configuration  # backs off as a configuration mistake
    assert "not a JWT" in str(caught.value)
    assert "SECRET" not in str(caught.value)
    assert not spec.path.exists()


# ---- the consumer of runner events ---------------------------------------------------------


def _files(tmp_path: Path, metrics: Metrics) -> tuple[TemplateFiles, Readiness]:
    readiness = Readiness(metrics)
    deps = Deps(metrics, readiness, SystemClock(), asyncio.Semaphore(1), Policy())
    return TemplateFiles(deps, root=tmp_path, readiness=readiness, metrics=metrics), readiness


def _spec(tmp_path: Path, template: str) -> FileSpec:
    return FileSpec("app", tmp_path / "app.env", template, ("a", "b"))


async def _settle(files: TemplateFiles) -> None:
    while pending := [f.task for f in files.files.values() if f.task and not f.task.done()]:
        await asyncio.gather(*pending)


def test_written_only_when_every_token_is_held_and_rerendered_on_each_refresh(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        metrics = Metrics()
        files, readiness = _files(tmp_path, metrics)
        files.apply(
            {"app": _spec(tmp_path, "A=$a.access_token\nB=$b.access_token\n")}, set(), running=True
        )
        target = tmp_path / "app.env"
        files.observe(Written("a", token("a-1")))
        await _settle(files)
        assert not target.exists()  # never partially: b is missing
        assert readiness.snapshot() == (False, {"file:app": "pending"})
        files.observe(Written("b", token("b-1")))
        await _settle(files)
        assert target.read_text() == "A=a-1\nB=b-1\n"
        assert readiness.snapshot() == (True, {"file:app": "ok"})
        files.observe(Written("b", token("b-2")))
        files.observe(Written("other", token("x")))  # not needed: ignored, not held
        await _settle(files)
        assert target.read_text() == "A=a-1\nB=b-2\n"
        assert "other" not in files.held
        files.observe(Written("a", token("a-3", expires_on=time.time() - 1)))
        files.observe(Expired("a"))
        await _settle(files)
        assert target.read_text() == "A=a-1\nB=b-2\n"  # an expired token is not rendered

    asyncio.run(scenario())


def test_a_render_error_at_reload_keeps_the_old_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        metrics = Metrics()
        files, readiness = _files(tmp_path, metrics)
        files.apply(
            {"app": _spec(tmp_path, "A=$a.access_token B=$b.access_token\n")}, set(), running=True
        )
        files.observe(Written("a", token("opaque-a")))
        files.observe(Written("b", token(jwt(oid=OID))))
        await _settle(files)
        target = tmp_path / "app.env"
        before = target.read_bytes()
        # The reload changes the template to use a claim the opaque token lacks.
        files.apply({"app": _spec(tmp_path, "U=$a.oid B=$b.oid\n")}, set(), running=True)
        await _settle(files)
        assert target.read_bytes() == before
        value = exposition.registry(metrics).get_sample_value(
            "entra_tokend_file_render_failures_total", {"file": "app", "reason": "missing_claim"}
        )
        assert value == 1
        assert readiness.snapshot()[1] == {"file:app": "failing"}
        # A template the tokens can fill renders at once, without waiting for a refresh.
        files.apply({"app": _spec(tmp_path, "B=$b.oid\n")}, set(), running=True)
        await _settle(files)
        assert target.read_text() == f"B={OID}\n"

    asyncio.run(scenario())


# ---- configuration ---------------------------------------------------------------------------

TOKENS = f'[token.storage]\nscope="{STORAGE}"\n[token.vault]\nscope="{VAULT}"\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[file.app]\ntemplate="${storage.nope}"\n', "file.app.template: unknown field 'nope'"),
        ('[file.app]\ntemplate="${graph.oid}"\n', "file.app.template: unknown token 'graph'"),
        ('[file.app]\ntemplate=""\n', "file.app.template: is empty"),
        ('[file.app]\ntemplate="no placeholder"\n', "file.app.template: names no token"),
        ('[file.app]\ntemplate="$x"\n', "file.app.template: template syntax error"),
        ('[file.app]\ntemplate="$storage.oid"\ncolour=1\n', "file.app: unknown key 'colour'"),
        ('[file.app]\ntemplate="$storage.oid"\npath="storage"\n', "file.app.path: token.storage"),
        (
            '[file.app]\ntemplate="$storage.oid"\ntokens=["storage", "x"]\n',
            "file.app.tokens: 'x' is not",
        ),
        ('[file.app]\ntemplate="$storage.oid"\ntokens=["vault"]\n', "file.app.tokens: the tem"),
        ('[file.app]\ntemplate_file="missing.tmpl"\n', "file.app.template_file: cannot read"),
        ("[file.app]\n", "file.app.template: give exactly one"),
        ('[token.t]\nscope="S"\nformat="template"\ntemplate=""\n', "token.t.template: is empty"),
        ('[token.t]\nscope="S"\nformat="template"\ntemplate="$oidd"\n', "token.t.template: unk"),
    ],
)
def test_config_errors_name_the_key_and_exit_2(tmp_path: Path, body: str, expected: str) -> None:
    config = write_config(tmp_path / "c.toml", body=TOKENS + body.replace('"S"', f'"{STORAGE}"'))
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 2, result.stdout
    prefix = "entra-tokend: config: "
    lines = [line.removeprefix(prefix) for line in result.stderr.splitlines()]
    lines = [line for line in lines if line.startswith(("file.", "token."))]
    assert len(lines) == 1, result.stderr  # one line per mistake
    assert lines[0].startswith(expected), result.stderr


def test_check_config_prints_the_file_table_and_reads_it_back(tmp_path: Path) -> None:
    (tmp_path / "app.tmpl").write_text('user = "${storage.oid}"\npass = "$vault.access_token"\n')
    config = write_config(
        tmp_path / "c.toml",
        body=TOKENS + '[file.app]\ntemplate_file="app.tmpl"\npath="sub/app.toml"\n'
        'file_mode="0600"\n[file.app.hook]\nexec=["true"]\n',
    )
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)["file"]["app"]
    assert effective["tokens"] == ["storage", "vault"]  # the tokens the template names
    # Where the template was read from, never its text (a template_file may be any file).
    assert effective["template_file"] == str(tmp_path / "app.tmpl")
    assert "template" not in effective
    assert effective["path"] == "sub/app.toml"
    assert effective["file_mode"] == "0600"
    assert effective["hook"]["exec"] == ["true"]
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    result = run_cli("check-config", "--config", str(again), env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr
    # Offline the template file is not read: the setting is shown as given.
    result = run_cli(
        "check-config", "--offline", "--config", str(config), env=offline_env(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    offline = tomllib.loads(result.stdout)["file"]["app"]
    assert offline["template_file"] == str(tmp_path / "app.tmpl")
    assert "template" not in offline


def test_a_template_file_naming_an_unknown_token_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "app.tmpl").write_text("${graph.access_token}\n")
    config = write_config(
        tmp_path / "c.toml", body=TOKENS + '[file.app]\ntemplate_file="app.tmpl"\n'
    )
    result = run_cli("check-config", "--config", str(config), env=offline_env(tmp_path))
    assert result.returncode == 2, result.stdout
    assert "config: file.app.template_file: unknown token 'graph'" in result.stderr
