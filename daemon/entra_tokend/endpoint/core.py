"""What every protocol shares: the request a protocol parsed, the allow-list, identity selectors,
the scope sent to Entra, and the refusals a protocol renders in its own shape.

A protocol adapter turns an HTTP request into an ``Ask`` (resource as the caller sent it, and
at most one ``Selector``) or a ``Refusal``; ``resolve`` turns an ``Ask`` into the identity and
scope to fetch, or a ``Refusal``. Refusals carry a ``Kind`` (what went wrong, protocol-neutral),
the text the app sees (names the parameter or entra-tokend's allow-list; never a secret) and
fields for the daemon's log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from entra_tokend.model import (
    AccessToken,
    Grant,
    Identity,
    empty_segment,
    is_resource_uri,
    resource_key,
    scope_of,
)
from entra_tokend.ports import TokenUnavailable


class TokenProvider(Protocol):
    """Where the endpoint gets tokens (``ondemand.OnDemandTokens``): single flight and cache
    live there."""

    async def get(self, identity: str, scope: str) -> AccessToken:
        """A token for (identity name, scope) that lives long enough to serve. Raises
        ``TokenUnavailable``."""
        ...


class Kind(StrEnum):
    """What went wrong, before a protocol gives it a status code."""

    UNAUTHORIZED = "unauthorized"
    """The protocol's secret header is missing or wrong (App Service only)."""
    BAD_REQUEST = "bad_request"
    """A malformed request: a parameter, header or value the protocol does not accept."""
    UNKNOWN_IDENTITY = "unknown_identity"
    """A selector that names no configured identity."""
    FORBIDDEN = "forbidden"
    """A resource (for that identity) not in ``[endpoint] allow``."""
    CONFIGURATION = "configuration"
    """Entra rejected the identity for a reason the operator must fix (AADSTS code)."""
    UNAVAILABLE = "unavailable"
    """No token now for a transient reason (network, throttling, Entra 5xx)."""


RESULT = {
    Kind.UNAUTHORIZED: "unauthorized",
    Kind.BAD_REQUEST: "bad_request",
    Kind.UNKNOWN_IDENTITY: "bad_request",
    Kind.FORBIDDEN: "forbidden",
    Kind.CONFIGURATION: "error",
    Kind.UNAVAILABLE: "error",
}
"""Each kind's ``result`` label of ``entra_tokend_endpoint_requests_total``."""


@dataclass(frozen=True)
class Refusal:
    """A request answered with an error: ``message`` for the app, ``log`` for the daemon's
    log (resource, selector, the allow entry that would admit it; never a secret), ``label``
    the metrics resource label (an allowed resource or ``other``)."""

    kind: Kind
    message: str
    log: Mapping[str, str] = field(default_factory=dict)
    label: str = "other"


class SelectorKind(StrEnum):
    """Which identity attribute a selector names."""

    CLIENT_ID = "client_id"
    OBJECT_ID = "object_id"
    RESOURCE_ID = "resource_id"


@dataclass(frozen=True)
class Selector:
    """One identity selector as sent: the protocol's parameter name, what it selects by, the
    value."""

    parameter: str
    kind: SelectorKind
    value: str


@dataclass(frozen=True)
class Ask:
    """A parsed token request: ``resource`` exactly as sent (surrounding blanks removed),
    ``selector`` None for the default identity of the resource."""

    resource: str
    selector: Selector | None = None


SELECTOR_SPELLINGS = frozenset(
    {"client_id", "clientid", "object_id", "principal_id", "mi_res_id", "msi_res_id", "resource_id"}
)
"""Every selector name any protocol defines, compared case-insensitively: a parameter that
matches one of these but is not exactly one of *this* protocol's is a 400, never silently the
default identity."""


def select(identities: Mapping[str, Identity], selector: Selector) -> Identity | None:
    """The identity a selector names (ids compared case-insensitively), or None."""
    wanted = selector.value.strip().lower()
    for identity in identities.values():
        if selector.kind is SelectorKind.CLIENT_ID:
            have: str | None = identity.client_id
        elif selector.kind is SelectorKind.OBJECT_ID:
            have = identity.object_id
        else:
            have = identity.resource_id
        if have is not None and have.lower() == wanted:
            return identity
    return None


def allow_entry(resource: str, identity: str, default: str = "default") -> str:
    """The ``[endpoint] allow`` entry that admits ``resource`` for ``identity`` (TOML)."""
    if identity == default:
        return f'"{resource}"'
    return f'{{resource = "{resource}", identity = "{identity}"}}'


def resolve(
    ask: Ask, identities: Mapping[str, Identity], grants: tuple[Grant, ...]
) -> tuple[Identity, str, str] | Refusal:
    """(identity, scope, metrics label) for ``ask``, or the ``Refusal``.

    The allow-list compares ``resource_key`` forms (no ``/.default``, no trailing slash); the
    scope keeps the caller's resource exactly (``model.scope_of``). A resource with an empty
    path segment (``//`` after the host, so also two or more trailing slashes) is refused
    (BAD_REQUEST naming ``resource``): it is no audience Entra issues, and admitting it would
    let callers mint any number of distinct scopes — one on-demand runner, Entra request and
    metric series each — for one allowed resource. So each grant has at most two scopes: the
    resource with and without one trailing slash. Without a selector the first grant of the
    resource names the identity.
    """
    key = resource_key(ask.resource)
    if not is_resource_uri(key):
        return Refusal(
            Kind.BAD_REQUEST,
            "resource must be an absolute URI such as https://storage.azure.com",
            {"parameter": "resource", "problem": "resource is not a URI"},
        )
    if empty_segment(ask.resource):
        return Refusal(
            Kind.BAD_REQUEST,
            "resource must not have an empty path segment ('//' after the host, or more than "
            "one trailing slash): send it as https://storage.azure.com or "
            "https://storage.azure.com/",
            {"parameter": "resource", "problem": "empty path segment"},
        )
    for_resource = [g for g in grants if g.resource == key]
    label = key if for_resource else "other"
    identity: Identity | None = None
    if ask.selector is not None:
        identity = select(identities, ask.selector)
        if identity is None:
            return Refusal(
                Kind.UNKNOWN_IDENTITY,
                f"{ask.selector.parameter} names no identity configured in entra-tokend",
                {"resource": key, "selector": f"{ask.selector.parameter}={ask.selector.value}"},
                label,
            )
        for_resource = [g for g in for_resource if g.identity == identity.name]
    if not for_resource:
        name = identity.name if identity is not None else "default"
        entry = allow_entry(key, name)
        log = {"resource": key, "identity": name, "would_admit": entry}
        if ask.selector is not None:
            log["selector"] = f"{ask.selector.parameter}={ask.selector.value}"
        return Refusal(
            Kind.FORBIDDEN,
            f"resource {key} is not in entra-tokend's [endpoint] allow list for identity "
            f"'{name}'; the operator can add {entry}",
            log,
            label,
        )
    chosen = identities.get(for_resource[0].identity)
    if chosen is None:  # config guarantees it; a reload race answers rather than crashes
        return Refusal(Kind.UNAVAILABLE, "identity unavailable", {"resource": key}, label)
    return chosen, scope_of(ask.resource), label


def refusal_for(exc: TokenUnavailable, label: str) -> Refusal:
    """The refusal for a provider failure: a configuration error (4xx) or a transient one."""
    message = f"{exc}: {exc.detail}" if exc.detail else str(exc)
    log = {"failure": str(exc.reason)}
    kind = Kind.CONFIGURATION if exc.configuration else Kind.UNAVAILABLE
    return Refusal(kind, message, log, label)
