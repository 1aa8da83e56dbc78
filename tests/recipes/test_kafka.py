"""README recipe "Kafka": librdkafka (PyPI ``confluent-kafka``) with SASL OAUTHBEARER and an
``oauth_cb`` that reads the daemon's ``json`` file. No broker: bootstrap ``127.0.0.1:1``
refuses, which is fine — librdkafka asks for (and installs) the token before it connects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from recipes.recipe_helpers import STORAGE, Emulator, acquire_once, wait_until

# librdkafka's own log line once a token from oauth_cb is accepted (debug=security).
TOKEN_SET = "Waking up waiting broker threads after setting OAUTHBEARER token"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_librdkafka_oauth_cb_passes_the_token_file(emu: Emulator, tmp_path: Path) -> None:
    kafka = pytest.importorskip("confluent_kafka", reason="pip install '.[test]'")
    config = tmp_path / "entra-tokend.toml"
    config.write_text(f'[token.kafka]\nscope = "{STORAGE}"\nformat = "json"\n')
    out = tmp_path / "tokens"
    acquire_once(emu, config, out)
    token_file = out / "kafka"
    passed: list[tuple[str, int]] = []

    # The README's callback: the file is re-read on every call, so a refreshed token is used.
    def oauth_cb(_config: str | None) -> tuple[str, int]:
        with open(token_file) as f:
            doc = json.load(f)
        passed.append((doc["access_token"], doc["expires_on"]))
        return doc["access_token"], doc["expires_on"]

    lines = _Lines()
    logger = logging.getLogger(f"librdkafka.{id(lines)}")
    logger.addHandler(lines)
    logger.setLevel(logging.DEBUG)
    producer = kafka.Producer(
        {
            "bootstrap.servers": "127.0.0.1:1",
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "OAUTHBEARER",
            "oauth_cb": oauth_cb,
            "debug": "security",
            "logger": logger,
        }
    )
    try:
        wait_until(
            lambda: producer.poll(0.05) is not None and TOKEN_SET in "\n".join(lines.lines),
            timeout=30,
            what="librdkafka to install the token from oauth_cb",
        )
    finally:
        producer.flush(0)

    doc = json.loads(token_file.read_text())
    assert passed[0] == (doc["access_token"], doc["expires_on"])
    assert doc["access_token"] in emu.issued_tokens
