"""``/_admin/*``: drive the emulator from another process (the CLI's users, shell scripts).

Only loopback peers may use it (403 otherwise). Endpoints (JSON bodies):

* ``GET /_admin/status``: request counts, recent token-request statuses, pending faults.
* ``POST /_admin/faults``: a fault object, a list of them, or ``{"faults": [...]}``.
* ``POST /_admin/clear-faults``, ``/_admin/expire-assertion``.
* ``POST /_admin/rotate``: ``{"ttl": seconds, "expired": bool}`` (both optional).
* ``POST /_admin/lifetime``: ``{"seconds": N}`` for issued access tokens.
* ``POST /_admin/acr-lifetime``: ``{"seconds": N}`` for ACR refresh tokens.
* ``POST /_admin/rotate-proxy-ca``: ``{"keep_previous": bool}``; identity-binding mode only.

Answers never contain a secret: a rotation says that it rotated, not what the token is.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any, Protocol

from entra_tokend.emulator.faults import Fault
from entra_tokend.emulator.proxy import IdentityBindingProxy
from entra_tokend.emulator.recorder import RecordedRequest
from entra_tokend.emulator.registry import RegistryTokenService
from entra_tokend.emulator.wire import Request, Response


class Administered(Protocol):
    """What the admin API drives: the parts of ``Emulator`` it reads and sets (declared here,
    so that this module does not import the facade that mounts it)."""

    access_token_lifetime: float
    acr_refresh_token_lifetime: float
    registries: RegistryTokenService
    proxy: IdentityBindingProxy | None

    def token_requests(self) -> list[RecordedRequest]: ...
    def pending_faults(self) -> int: ...
    def inject(self, *faults: Fault) -> None: ...
    def clear_faults(self) -> None: ...
    def reject_current_assertion_as_expired(self) -> None: ...
    def rotate(self, ttl: float | None = None, *, expired: bool = False) -> str: ...
    def rotate_proxy_ca(self, *, keep_previous: bool = False) -> None: ...


Action = Callable[[Any], dict[str, Any]]


def is_loopback_peer(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (IPv4-mapped loopback included); admin needs this."""
    try:
        ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _seconds(data: Any, minimum: float) -> float:
    if not isinstance(data, dict) or "seconds" not in data:
        raise ValueError('expected {"seconds": N}')
    seconds = float(data["seconds"])
    if seconds < minimum:
        raise ValueError(f"lifetime must be at least {minimum:g} second(s)")
    return seconds


class AdminApi:
    """Maps ``/_admin`` requests to the emulator's public methods."""

    def __init__(self, emu: Administered) -> None:
        self.emu = emu
        self.posts: dict[str, Action] = {
            "/_admin/faults": self._faults,
            "/_admin/clear-faults": self._clear_faults,
            "/_admin/expire-assertion": self._expire,
            "/_admin/rotate": self._rotate,
            "/_admin/lifetime": self._lifetime,
            "/_admin/acr-lifetime": self._acr_lifetime,
            "/_admin/rotate-proxy-ca": self._rotate_proxy_ca,
        }

    def handle(self, req: Request) -> Response:
        """Answer an admin request: 403 off loopback, 400 for bad input, 404 unknown."""
        if not is_loopback_peer(req.peer[0]):
            return Response.json(
                403, {"error": "forbidden", "detail": "admin requests only from loopback"}
            )
        path = req.path.rstrip("/")
        try:
            if req.method == "GET" and path == "/_admin/status":
                return Response.json(200, self.status())
            action = self.posts.get(path) if req.method == "POST" else None
            if action is None:
                return Response.json(404, {"error": "not_found"})
            data: Any = json.loads(req.body) if req.body.strip() else {}
            return Response.json(200, action(data))
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            return Response.json(400, {"error": "invalid_request", "detail": str(exc)})

    def status(self) -> dict[str, Any]:
        """What ``GET /_admin/status`` answers."""
        emu = self.emu
        reqs = emu.token_requests()
        return {
            "token_requests": len(reqs),
            "statuses": [r.status for r in reqs[-50:]],
            "pending_faults": emu.pending_faults(),
            "access_token_lifetime": emu.access_token_lifetime,
            "registries": emu.registries.names(),
            "identity_binding": emu.proxy is not None,
        }

    def _faults(self, data: Any) -> dict[str, Any]:
        items = data.get("faults", [data]) if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError('expected a fault object, a list of them, or {"faults": [...]}')
        parsed = [Fault.from_dict(i) for i in items]
        self.emu.inject(*parsed)
        return {"queued": len(parsed), "pending_faults": self.emu.pending_faults()}

    def _clear_faults(self, _data: Any) -> dict[str, Any]:
        self.emu.clear_faults()
        return {"pending_faults": 0}

    def _expire(self, _data: Any) -> dict[str, Any]:
        self.emu.reject_current_assertion_as_expired()
        return {"rejected": "current assertion"}

    def _rotate(self, data: Any) -> dict[str, Any]:
        ttl = data.get("ttl") if isinstance(data, dict) else None
        expired = bool(data.get("expired", False)) if isinstance(data, dict) else False
        self.emu.rotate(None if ttl is None else float(ttl), expired=expired)
        # The new assertion itself is a secret: say that it rotated, not what it is.
        return {"rotated": True}

    def _lifetime(self, data: Any) -> dict[str, Any]:
        seconds = _seconds(data, 1)
        self.emu.access_token_lifetime = seconds
        return {"access_token_lifetime": seconds}

    def _acr_lifetime(self, data: Any) -> dict[str, Any]:
        seconds = _seconds(data, 1)
        self.emu.acr_refresh_token_lifetime = seconds
        return {"acr_refresh_token_lifetime": seconds}

    def _rotate_proxy_ca(self, data: Any) -> dict[str, Any]:
        keep = bool(data.get("keep_previous", False)) if isinstance(data, dict) else False
        self.emu.rotate_proxy_ca(keep_previous=keep)
        return {"rotated": True}
