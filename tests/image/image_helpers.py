"""Small readers for tests/image/run_image.sh (run on the host with the repository's venv).

    image_helpers.py image-config FIELD < buildah-inspect.json
        One line per element of the built image's Docker config FIELD: ``Env`` (``NAME=VALUE``),
        ``Entrypoint``, ``Cmd``, ``Healthcheck`` (its ``Test`` list), or a string field such as
        ``User`` / ``WorkingDir`` (one line, empty when unset).
    image_helpers.py configmap FILE KEY LISTEN
        The ConfigMap's data KEY from the YAML FILE, with its ``listen = ...`` line set to LISTEN
        (the CI container shares the host's network, so the shipped port may be taken).
    image_helpers.py jwt-claim CLAIM < token
        The unverified payload claim CLAIM of the JWT on stdin (JSON for non-strings).

Exits 1 with a message on stderr when the input lacks what was asked for.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from typing import Any

import yaml


def image_config(field: str, inspect: dict[str, Any]) -> list[str]:
    """Lines for FIELD of ``buildah inspect --type image`` output (Docker-format image)."""
    config = inspect["Docker"]["config"]
    value = config.get(field)
    if field == "Healthcheck":
        value = (value or {}).get("Test")
    if value is None:
        return [""]
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def configmap(path: str, key: str, listen: str) -> str:
    """The ConfigMap data ``key`` with its top-level ``listen`` replaced by ``listen``."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "ConfigMap"]
    text = str(docs[0]["data"][key])
    new, count = re.subn(r'(?m)^listen = ".*"$', f'listen = "{listen}"', text)
    if count != 1:
        raise SystemExit(f"{path}: expected one listen line in {key}, found {count}")
    return new


def jwt_claim(token: str, claim: str) -> str:
    """Claim ``claim`` of an unverified JWT; strings as they are, anything else as JSON."""
    payload = token.strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    value = claims[claim]
    return value if isinstance(value, str) else json.dumps(value)


def main(argv: list[str]) -> int:
    """Dispatch on the sub-command; see the module docstring."""
    if argv[:1] == ["image-config"] and len(argv) == 2:
        print("\n".join(image_config(argv[1], json.load(sys.stdin))))
    elif argv[:1] == ["configmap"] and len(argv) == 4:
        print(configmap(argv[1], argv[2], argv[3]), end="")
    elif argv[:1] == ["jwt-claim"] and len(argv) == 2:
        print(jwt_claim(sys.stdin.read(), argv[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
