"""The ``[file.NAME]`` family of ``/metrics``, rendered after the others by ``exposition``
(``..._file_render_failures``): one counter per (file, reason), created at zero when the file
is configured (``Metrics.file_configured``)."""

from __future__ import annotations

from prometheus_client.metrics_core import CounterMetricFamily, Metric

from entra_tokend.metrics import Metrics


def file_families(m: Metrics) -> list[Metric]:
    """``entra_tokend_file_render_failures_total{file, reason}`` from ``m.file_failures``."""
    files = CounterMetricFamily(
        "entra_tokend_file_render_failures",
        "[file.NAME] renders that left the previous file in place, by reason "
        "(missing_claim, write_error; hook: its hook failed after a write).",
        labels=["file", "reason"],
    )
    for (name, reason), value in m.file_failures.items():
        files.add_metric([name, reason], value)
    return [files]
