"""A token-file reader for the crash-safety stress test (stdlib only; also imported by tests).

Usage: token_reader.py STOP_FILE RESULT_FILE DEADLINE_SECONDS PATH:FORMAT...

Reads and parses every PATH in a tight loop, the way a consumer would, until STOP_FILE exists
(or the deadline passes), then writes a JSON summary to RESULT_FILE: how many reads, how many
were missing/empty/unparsable, and the sha256 of every distinct token seen, so the test can check
each one is a token Entra (the emulator) really issued: never a partial or foreign file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
from pathlib import Path


def _b64json(part: str) -> object:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def classify(data: bytes, fmt: str) -> tuple[str, str | None]:
    """('ok', sha256 of the access token) or (what is wrong, None) for one file content."""
    if not data:
        return "empty", None
    try:
        text = data.decode("ascii")
        token = text
        if fmt == "json":
            doc = json.loads(text)
            if not isinstance(doc, dict) or not isinstance(doc.get("expires_on"), int):
                return "unparsable", None
            token = doc["access_token"]
        header, payload, signature = token.split(".")
        if not isinstance(_b64json(header), dict) or not isinstance(_b64json(payload), dict):
            return "unparsable", None
        if not signature:
            return "unparsable", None
    except (ValueError, KeyError, TypeError):  # JSON, base64, split and decode errors
        return "unparsable", None
    return "ok", hashlib.sha256(token.encode()).hexdigest()


def main(argv: list[str]) -> int:
    """Read until told to stop; write the summary."""
    stop, result = Path(argv[0]), Path(argv[1])
    deadline = time.monotonic() + float(argv[2])
    targets = [(Path(p), f) for p, _, f in (a.rpartition(":") for a in argv[3:])]
    os.nice(5)  # a tight loop, but the daemon under test must still get the CPU
    reads = 0
    bad: dict[str, int] = {}
    seen: set[str] = set()
    started = Path(f"{result}.started")
    while not stop.exists() and time.monotonic() < deadline:
        for path, fmt in targets:
            try:
                with path.open("rb") as f:
                    data = f.read()
            except FileNotFoundError:
                kind, digest = "missing", None
            else:
                kind, digest = classify(data, fmt)
            reads += 1
            if digest is None:
                bad[kind] = bad.get(kind, 0) + 1
            else:
                seen.add(digest)
        if not started.exists():
            started.touch()
    summary = {"reads": reads, "bad": bad, "seen": sorted(seen)}
    tmp = result.with_suffix(".part")
    tmp.write_text(json.dumps(summary))
    tmp.rename(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
