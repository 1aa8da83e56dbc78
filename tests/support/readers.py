"""Readers: ``jwt_claims`` (an unverified JWT payload) and the Prometheus text-format readers
``samples``, ``sample_names`` and ``sample_value`` (prometheus_client's own parser)."""

from __future__ import annotations

import base64
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (for comparing claims such as ``exp`` with figures)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(scrape: str) -> Samples:
    """``{(sample name, labels): value}`` of a Prometheus text-format scrape."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
    }


def sample_names(scrape: str) -> set[str]:
    """Every sample name (``x_bucket``, ``y_total``...) in a text-format scrape."""
    return {name for name, _ in samples(scrape)}


def sample_value(scrape: str, name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` with exactly ``labels``; None when there is none."""
    return samples(scrape).get((name, frozenset(labels.items())))
