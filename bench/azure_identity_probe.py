#!/usr/bin/env python3
"""The competitor: an app that imports azure-identity and gets one token in-process.

Run by ``run_all.py`` in a fresh interpreter with the emulator's environment (the variables a
workload-identity pod gets, plus ``REQUESTS_CA_BUNDLE`` for the emulator's CA). Prints one JSON
line: seconds to import ``WorkloadIdentityCredential``, seconds for the first ``get_token``, and
the process's RSS afterwards. Nothing else is imported or done.

    set -a; . EMULATOR_STATE/env; set +a
    .venv/bin/python bench/azure_identity_probe.py
"""

from __future__ import annotations

import json
import time

T0 = time.perf_counter()


def _status_kib() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                out[key] = int(rest.split()[0])
    return out


def main() -> int:
    """Import, get one token, report."""
    before = _status_kib()
    from azure.identity import WorkloadIdentityCredential

    imported = time.perf_counter()
    credential = WorkloadIdentityCredential()
    token = credential.get_token("https://storage.azure.com/.default")
    got = time.perf_counter()
    after = _status_kib()
    print(
        json.dumps(
            {
                "import_s": round(imported - T0, 4),
                "get_token_s": round(got - imported, 4),
                "import_and_token_s": round(got - T0, 4),
                "rss_before_import_kib": before["VmRSS"],
                "rss_kib": after["VmRSS"],
                "rss_anon_kib": after["RssAnon"],
                "rss_file_kib": after["RssFile"],
                "hwm_kib": after["VmHWM"],
                "threads": after["Threads"],
                "token_expires_in": int(token.expires_on - time.time()),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
