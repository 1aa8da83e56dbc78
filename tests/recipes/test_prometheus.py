"""README recipe "Prometheus": ``authorization: {type: Bearer, credentials_file: ...}`` in a
real Prometheus scrape config, pointed at the daemon's ``raw`` file — the token is sent as is,
and a replaced file is read again at the next scrape (no reload)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from recipes.recipe_helpers import (
    STORAGE,
    Emulator,
    Upstream,
    acquire_once,
    free_port,
    require,
    wait_until,
)


def _scrape_config(upstream: Upstream, credentials_file: Path) -> dict[str, object]:
    target = upstream.url.removeprefix("http://")
    return {
        "global": {"scrape_interval": "250ms", "scrape_timeout": "250ms"},
        "scrape_configs": [
            {
                "job_name": "protected",
                "authorization": {"type": "Bearer", "credentials_file": str(credentials_file)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }


def _sent(upstream: Upstream, token: str) -> bool:
    return [f"Bearer {token}"] in upstream.seen


def test_prometheus_sends_the_raw_file_and_rereads_it(
    emu: Emulator, upstream: Upstream, tmp_path: Path
) -> None:
    require("prometheus")
    config = tmp_path / "entra-tokend.toml"
    config.write_text(f'[token.prom]\nscope = "{STORAGE}"\n')  # format = "raw", the default
    out = tmp_path / "tokens"
    acquire_once(emu, config, out)
    first = (out / "prom").read_text()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(json.dumps(_scrape_config(upstream, out / "prom")))  # JSON is YAML
    with open(tmp_path / "prometheus.log", "wb") as log:
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={prom_config}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{free_port()}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: _sent(upstream, first), timeout=60, what="a scrape with the token")
        acquire_once(emu, config, out)  # a refresh: the file is replaced
        second = (out / "prom").read_text()
        assert second != first
        wait_until(lambda: _sent(upstream, second), timeout=60, what="the new token")
    finally:
        prom.terminate()
        prom.wait(timeout=30)
