"""README recipe "nginx": a ``template`` file holding ``proxy_set_header Authorization ...``,
included by a real nginx, and an ``exec`` hook that runs ``nginx -t`` before ``nginx -s
reload`` — so a config nginx rejects is never loaded, and the hook's failure is logged and
counted (``entra_tokend_hook_failures``) while nginx keeps serving the previous token.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from recipes.recipe_helpers import (
    STORAGE,
    DaemonProcess,
    Emulator,
    Upstream,
    emulator_env,
    free_port,
    require,
    sample_value,
    wait_until,
)

GOOD = 'proxy_set_header Authorization "$token_type $access_token";'
REJECTED = 'proxy_set_header Authorization "$token_type $access_token"'  # no ";"


@dataclass
class Nginx:
    """A real nginx (master + one worker) proxying ``url`` to an upstream, its
    ``location`` including ``include`` (the daemon's file)."""

    conf: Path
    include: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/``."""
        return f"http://127.0.0.1:{self.port}/"

    def get(self) -> bool:
        """One request through nginx; True when it answered 200."""
        try:
            with urllib.request.urlopen(self.url, timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def hook(self) -> list[str]:
        """The README's hook, with this instance's config file."""
        nginx, conf = shutil.which("nginx") or "nginx", str(self.conf)
        return ["/bin/sh", "-c", f"{nginx} -t -c {conf} && {nginx} -s reload -c {conf}"]


def _nginx_conf(home: Path, port: int, include: Path, upstream: str) -> str:
    temp = (
        "\n".join(
            f"  {kind}_temp_path {home / kind};" for kind in ("client_body", "proxy", "fastcgi")
        )
        + f"\n  uwsgi_temp_path {home / 'uwsgi'};\n  scgi_temp_path {home / 'scgi'};"
    )
    return f"""daemon off;
worker_processes 1;
pid {home / "nginx.pid"};
error_log {home / "error.log"} warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
{temp}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      include {include};
      proxy_pass {upstream};
    }}
  }}
}}
"""


@pytest.fixture
def nginx(upstream: Upstream, tmp_path: Path) -> Iterator[Nginx]:
    """nginx up and proxying, with a placeholder in the include until the daemon writes it."""
    require("nginx", "curl")
    home = tmp_path / "nginx"
    home.mkdir()
    include = tmp_path / "tokens" / "nginx" / "upstream-auth.conf"
    include.parent.mkdir(parents=True)
    include.write_text('proxy_set_header Authorization "none";\n')
    port = free_port()
    conf = home / "nginx.conf"
    conf.write_text(_nginx_conf(home, port, include, upstream.url))
    err = home / "stderr"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            ["nginx", "-c", str(conf), "-e", str(home / "error.log")], stderr=stderr
        )
    server = Nginx(conf, include, port, proc)
    try:
        wait_until(server.get, timeout=30, what="nginx to answer")
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _config(path: Path, template: str, hook: list[str]) -> Path:
    argv = ", ".join(f"'{arg}'" for arg in hook)
    path.write_text(
        f'[token.upstream]\nscope = "{STORAGE}"\nformat = "template"\n'
        f"template = '{template}'\npath = \"nginx/upstream-auth.conf\"\n"
        f"[token.upstream.hook]\nexec = [{argv}]\n"
    )
    return path


def _last_authorization(nginx: Nginx, upstream: Upstream) -> list[str]:
    assert nginx.get()
    return upstream.seen[-1]


def test_nginx_sends_the_token_and_keeps_it_when_a_new_config_is_rejected(
    emu: Emulator,
    nginx: Nginx,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    out = nginx.include.parent.parent
    env = emulator_env(emu, out, ENTRA_TOKEND_LISTEN="127.0.0.1:0")
    good = DaemonProcess(
        ["run", "--config", str(_config(tmp_path / "good.toml", GOOD, nginx.hook()))],
        env,
        tmp_path / "good.log",
    )
    try:
        ran = good.wait_event("hook command ran", timeout=30, token="upstream")
        assert ran["exit_code"] == 0
        first = (nginx.include.read_text().split('"')[1]).partition(" ")[2]
        assert first in emu.issued_tokens
        # nginx reloads in the background after `-s reload`: poll until its workers send it.
        wait_until(
            lambda: _last_authorization(nginx, upstream) == [f"Bearer {first}"],
            timeout=30,
            what="nginx to send the daemon's token",
        )
    finally:
        assert good.stop() == 0

    bad = DaemonProcess(
        ["run", "--config", str(_config(tmp_path / "bad.toml", REJECTED, nginx.hook()))],
        env,
        tmp_path / "bad.log",
    )
    try:
        failed = bad.wait_event("hook command failed", timeout=30, token="upstream")
        assert failed["exit_code"] != 0
        assert "test failed" in failed.get("output", "")
        # The log line comes first; the counter follows in the same step.
        failures = wait_until(
            lambda: sample_value(
                bad.scrape(), "entra_tokend_hook_failures_total", token="upstream"
            ),
            timeout=30,
        )
        assert failures == 1
    finally:
        assert bad.stop() == 0
    # The rejected file is on disk, but nginx never loaded it: still the first token.
    assert not nginx.include.read_text().rstrip().endswith(";")
    assert _last_authorization(nginx, upstream) == [f"Bearer {first}"]
    assert nginx.proc.poll() is None
