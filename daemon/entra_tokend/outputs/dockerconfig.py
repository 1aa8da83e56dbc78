"""``format = "docker-config"``: Azure Container Registry credentials in a docker config file.

``{"auths": {"<registry>": {"auth": base64("00000000-0000-0000-0000-000000000000:<ACR refresh
token>")}}}`` — the form ACR documents for ``docker login`` with a refresh token (user name
the all-zero GUID, password the refresh token; "Azure Container Registry authentication:
az acr login --expose-token"), and the one the containers-auth.json(5) parser of skopeo/podman,
docker (``DOCKER_CONFIG``), crane, oras and helm read. ``identitytoken`` is not used: skopeo
ignores it for registries with token auth. One file holds every registry of the token.

The refresh tokens come from the ACR exchange stage (``AccessToken.extra``); the Entra token
itself is not written.
"""

from __future__ import annotations

import base64
import binascii
import json

from entra_tokend.model import AccessToken, OutputSpec, registry_key
from entra_tokend.outputs.writer import ExistingToken, jwt_times

ACR_USER = "00000000-0000-0000-0000-000000000000"
"""The user name ACR expects with a refresh token as the password."""


def render(token: AccessToken) -> bytes:
    """The docker config JSON (indented, trailing newline), one ``auths`` entry per registry
    in ``token.extra``."""
    auths = {
        registry: {"auth": base64.b64encode(f"{ACR_USER}:{refresh}".encode()).decode()}
        for registry, refresh in sorted(token.extra.items())
    }
    return (json.dumps({"auths": auths}, indent=2) + "\n").encode()


def refresh_tokens(data: bytes) -> dict[str, str]:
    """registry → refresh token from a docker config file (entries of other shapes skipped)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    auths = doc.get("auths") if isinstance(doc, dict) else None
    found: dict[str, str] = {}
    if not isinstance(auths, dict):
        return found
    for registry, entry in auths.items():
        auth = entry.get("auth") if isinstance(entry, dict) else None
        if not isinstance(auth, str):
            continue
        try:
            user, _, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            continue
        if user == ACR_USER and password:
            found[registry] = password
    return found


def existing(data: bytes, spec: OutputSpec) -> ExistingToken | None:
    """The expiry of a docker config an earlier run wrote: the earliest ``exp`` of its refresh
    tokens (what is on disk ends when its first credential does), or None — also when it lacks
    one of ``spec.registries`` (the configuration gained a registry)."""
    found = refresh_tokens(data)
    if not found or any(registry_key(r) not in found for r in spec.registries):
        return None
    times = [jwt_times(found[registry_key(r)]) for r in spec.registries] or [
        jwt_times(t) for t in found.values()
    ]
    if any(exp is None for _, exp in times):
        return None
    expires_on = min(exp for _, exp in times if exp is not None)
    issued = [iat for iat, _ in times if iat is not None]
    return ExistingToken(issued_at=max(issued) if issued else None, expires_on=expires_on)
