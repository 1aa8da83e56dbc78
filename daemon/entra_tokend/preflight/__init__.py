"""Host checks: everything that asks the machine the daemon runs on, in one place, shared by
``run`` (before it starts and at every reload) and ``check-config``; ``check-config --offline``
skips exactly this package.

``load_config`` is pure; what it leaves to the host (``Config.host``) is settled here in two
rounds, each problem one line in the configuration-error format (``entra-tokend: config:
...``) naming the key, flag or variable that fixes it:

1. ``resolve`` (and ``load`` = ``load_config`` + ``resolve``): user and group names → ids,
   ``template_file`` and ``secret_file`` contents, CA files readable, output_dir usable or
   creatable. Its problems are configuration errors (exit 2 at start, a rejected reload), in
   the same round as ``load_config``'s own.
2. ``check_host`` (``check-config``) and ``startup_checks`` (``run``): what ``run`` meets when
   it starts — output_dir's lock, the listen addresses, proxy variables, each identity's
   projected token (present, a JWT, unexpired). ``run`` finds the lock and the listeners by
   taking them, and words those failures with ``output_dir_problem`` and ``listen_problem``.

``Findings.notes`` are facts ``check-config`` prints as TOML comments (the projected token's
iss/sub/aud, which a federated credential must match); ``Findings.warnings`` are accepted
risks that ``run`` logs (a secret file other users can read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from entra_tokend.config import (
    Config,
    ConfigError,
    HostLookups,
    Overrides,
    load_config,
    validate_files,
)
from entra_tokend.config.validate import Problems
from entra_tokend.model import FileSpec, OutputSpec
from entra_tokend.preflight import files
from entra_tokend.preflight.files import world_writable
from entra_tokend.preflight.lines import (
    Findings,
    listen_problem,
    output_dir_problem,
    print_problems,
)
from entra_tokend.preflight.running import (
    check_host,
    check_listeners,
    check_output_dir,
    check_projected_tokens,
    check_proxies,
    default_trust,
    startup_checks,
)

__all__ = [
    "Findings",
    "check_host",
    "check_listeners",
    "check_output_dir",
    "check_projected_tokens",
    "check_proxies",
    "default_trust",
    "listen_problem",
    "load",
    "output_dir_problem",
    "print_problems",
    "resolve",
    "startup_checks",
    "world_writable",
]


@dataclass
class _Answers:
    ids: dict[str, int | None] = field(default_factory=dict)  # OwnerLookup.key -> id
    templates: dict[str, str | None] = field(default_factory=dict)  # token name -> text
    file_templates: dict[str, str | None] = field(default_factory=dict)  # file name -> text
    secret: str | None = None


def _look_up(lookups: HostLookups, p: Problems, warnings: list[str]) -> _Answers:
    """Every look-up ``lookups`` lists, in configuration order; problems go to ``p``."""
    answers = _Answers()
    for owner in lookups.owners:
        answers.ids[owner.key] = files.owner(owner.value, owner.key, p, group=owner.group)
    for name, path in lookups.templates:
        answers.templates[name] = files.template_file(path, f"token.{name}.template_file", p)
    for name, path in lookups.file_templates:
        answers.file_templates[name] = files.text_file(path, f"file.{name}.template_file", p)
    if lookups.secret_file is not None:
        where = "endpoint.secret_file"
        answers.secret = files.secret_file(lookups.secret_file, where, p, warnings)
    for key, path in lookups.ca_files:
        files.ca_file(path, key, p)
    for key, path in lookups.token_proxy_ca_files:
        files.token_proxy_ca_file(path, key, p)
    if "\x00" not in str(lookups.output_dir):  # load_config reported it
        problem, _note = files.output_dir(lookups.output_dir)
        if problem:
            p.add(problem)
    return answers


def _output(spec: OutputSpec, lookups: HostLookups, answers: _Answers) -> OutputSpec:
    changes: dict[str, object] = {}
    for owner in lookups.owners:
        if spec.name in owner.tokens:
            changes["file_group" if owner.group else "file_owner"] = answers.ids[owner.key]
    if spec.name in answers.templates:
        changes["template"] = answers.templates[spec.name]
    return replace(spec, **changes)  # type: ignore[arg-type]


def resolve(config: Config, found: Findings | None = None) -> Config:
    """``config`` with what ``config.host`` lists looked up and checked (see module): owner
    ids, template texts and the endpoint secret filled in. Warnings go to ``found``. Raises
    ConfigError (one line per problem). A Config from ``load_config(..., offline=True)``
    with settings left to the pod (``run_time``) is refused: it can only be rendered."""
    if config.run_time:
        raise ConfigError([f"{key}: supplied at run time, but not set" for key in config.run_time])
    if config.host is None:
        return config
    p = Problems()
    lookups = config.host
    answers = _look_up(lookups, p, found.warnings if found is not None else [])
    if p.lines:
        raise ConfigError(p.lines)
    tokens = {
        name: replace(spec, output=_output(spec.output, lookups, answers))
        for name, spec in config.tokens.items()
    }
    file_specs = _files(config, answers, p)
    if p.lines:
        raise ConfigError(p.lines)
    endpoint = config.endpoint
    if endpoint is not None and lookups.secret_file is not None:
        assert answers.secret is not None  # else a problem was reported
        endpoint = replace(endpoint, secret=answers.secret)
    top = {o.key: answers.ids[o.key] for o in lookups.owners if "." not in o.key}
    return replace(
        config,
        tokens=tokens,
        endpoint=endpoint,
        file_owner=top.get("file_owner", config.file_owner),
        file_group=top.get("file_group", config.file_group),
        files=file_specs,
        host=replace(
            lookups,
            owners=(),
            templates=(),
            secret_file=None,
            file_templates=(),
            template_paths=(
                *((f"token.{name}", path) for name, path in lookups.templates),
                *((f"file.{name}", path) for name, path in lookups.file_templates),
            ),
        ),
    )


def _files(config: Config, answers: _Answers, p: Problems) -> dict[str, FileSpec]:
    """``config.files`` with owner ids and ``template_file`` texts filled in and checked."""
    out: dict[str, FileSpec] = {}
    for name, spec in config.files.items():
        resolved: FileSpec | None = _file_owners(spec, config, answers)
        if resolved is not None and name in answers.file_templates:
            text = answers.file_templates[name]
            where = f"file.{name}.template_file"
            resolved = (
                None
                if text is None
                else validate_files.template(resolved, text, config.tokens, where, p)
            )
        if resolved is not None:
            out[name] = resolved
    return out


def _file_owners(spec: FileSpec, config: Config, answers: _Answers) -> FileSpec:
    ids: dict[str, int | None] = {}
    for owner in config.host.owners if config.host is not None else ():
        if f"file:{spec.name}" in owner.tokens:
            ids["file_group" if owner.group else "file_owner"] = answers.ids[owner.key]
    return replace(
        spec,
        file_owner=ids.get("file_owner", spec.file_owner),
        file_group=ids.get("file_group", spec.file_group),
    )


def load(overrides: Overrides, env: Mapping[str, str], found: Findings | None = None) -> Config:
    """``load_config`` then ``resolve``: the configuration ``run`` starts (and reloads) with.
    The host's problems are reported in the same round as the configuration's own, whenever
    the configuration file could be read. Raises ConfigError."""
    try:
        config = load_config(overrides, env)
    except ConfigError as exc:
        if exc.lookups is None:
            raise
        p = Problems()
        _look_up(exc.lookups, p, [])
        raise ConfigError([*exc.problems, *p.lines]) from None
    return resolve(config, found)
