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
import json

from entra_tokend.model import ACR_NULL_USER, AccessToken

ACR_USER = ACR_NULL_USER
"""The user name ACR expects with a refresh token as the password."""


def render(token: AccessToken) -> bytes:
    """The docker config JSON (indented, trailing newline), one ``auths`` entry per registry
    in ``token.extra``."""
    auths = {
        registry: {"auth": base64.b64encode(f"{ACR_USER}:{refresh}".encode()).decode()}
        for registry, refresh in sorted(token.extra.items())
    }
    return (json.dumps({"auths": auths}, indent=2) + "\n").encode()
