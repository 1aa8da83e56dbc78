"""The emulated cluster's service-account token issuer: key, OIDC documents, projected token.

kube-apiserver signs projected service-account tokens with an RSA key and publishes OIDC
discovery (``/.well-known/openid-configuration``) and a JWKS (``/openid/v1/jwks``) at the
issuer URL; kubelet writes each token into the pod's projected volume with its AtomicWriter
sequence (``kubelet.ProjectedVolume``) and rotates it at 80% of its lifetime. This module
does both; the issuer URL is the emulator's own base URL, known once it listens.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from entra_tokend.emulator._crypto import (
    SigningKey,
    cached_key,
    decode_jwt,
    load_or_create_key,
)
from entra_tokend.emulator.kubelet import ProjectedVolume

TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"  # noqa: S105 - an audience, not a secret
# The audience AKS identity bindings put in the projected token instead (the workload-identity
# webhook's identity-binding audience; Azure/secrets-store-csi-driver-provider-azure
# IdentityBindingTokenAudience, AgentBaker's serviceAccountTokenAudience).
IDENTITY_BINDING_AUDIENCE = "api://AKSIdentityBinding"


class ClusterIssuer:
    """Signs projected service-account tokens and publishes them like kubelet.

    ``base_url`` returns the issuer URL (``iss``), resolved at signing time because the
    emulator's port is known only after it binds. ``audiences`` is what the projected token
    written by ``rotate()`` carries. Call ``load_keys()`` before signing.
    """

    def __init__(
        self,
        keys_dir: Path,
        volume: ProjectedVolume,
        base_url: Callable[[], str],
        *,
        namespace: str,
        service_account: str,
        token_ttl: float,
        audiences: Sequence[str] = (TOKEN_EXCHANGE_AUDIENCE,),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys_dir = keys_dir
        self.clock = clock  # unix seconds: iat/nbf/exp of the tokens signed
        self.volume = volume
        self.base_url = base_url
        self.namespace = namespace
        self.service_account = service_account
        self.token_ttl = token_ttl
        self.audiences = list(audiences)
        self._key: SigningKey | None = None
        self._foreign: SigningKey | None = None
        self._rotate_lock = threading.Lock()
        self._pod_uid = str(uuid.uuid4())
        self._sa_uid = str(uuid.uuid4())

    # ----------------------------------------------------------------- keys and documents
    def load_keys(self) -> None:
        """Load (or create) the signing key in ``keys_dir/cluster-sa.pem``."""
        self._key = SigningKey(load_or_create_key(self.keys_dir / "cluster-sa.pem", "cluster"))

    @property
    def key(self) -> SigningKey:
        """The signing key; ``RuntimeError`` before ``load_keys()``."""
        if self._key is None:
            raise RuntimeError("emulator not started")
        return self._key

    @property
    def subject(self) -> str:
        """The projected token's ``sub``: system:serviceaccount:NS:SA."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def discovery(self) -> dict[str, Any]:
        """The issuer's OIDC discovery document (as kube-apiserver serves it)."""
        issuer = self.base_url()
        return {
            "issuer": issuer,
            "jwks_uri": f"{issuer}/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        """The JWKS that verifies projected tokens."""
        return {"keys": [self.key.jwk()]}

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of ``token`` when this issuer's key signed it, else None (no time checks)."""
        try:
            _header, claims = decode_jwt(token)
        except ValueError:
            return None
        return claims if self.key.verify_jwt(token) else None

    # ----------------------------------------------------------------- tokens
    def issue(
        self,
        ttl: float | None = None,
        *,
        issuer: str | None = None,
        subject: str | None = None,
        audience: str | list[str] | None = None,
        expired: bool = False,
        not_before: float | None = None,
        untrusted_key: bool = False,
    ) -> str:
        """Sign a projected service-account token (seconds for ``ttl``) without writing it.

        ``untrusted_key`` signs with a key absent from the JWKS; ``expired`` backdates it so
        it expired a minute ago; ``audience`` defaults to ``audiences``.
        """
        key = self._foreign_key() if untrusted_key else self.key
        lifetime = float(ttl if ttl is not None else self.token_ttl)
        now = self.clock()
        iat = now - lifetime - 60 if expired else now
        claims: dict[str, Any] = {
            "aud": audience if audience is not None else list(self.audiences),
            "exp": int(iat + lifetime),
            "iat": int(iat),
            "iss": issuer if issuer is not None else self.base_url(),
            # Kubernetes >= 1.29 gives each token a jti; it also makes every rotation unique.
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": self.namespace,
                "pod": {"name": f"{self.service_account}-emulated", "uid": self._pod_uid},
                "serviceaccount": {"name": self.service_account, "uid": self._sa_uid},
            },
            "nbf": int(not_before if not_before is not None else iat),
            "sub": subject if subject is not None else self.subject,
        }
        return key.sign_jwt(claims)

    def rotate(self, ttl: float | None = None, *, expired: bool = False) -> str:
        """Issue a new projected token and publish it with kubelet's write sequence."""
        token = self.issue(ttl, expired=expired)
        with self._rotate_lock:  # the background rotator and callers must not interleave
            self.volume.write(token)
        return token

    def _foreign_key(self) -> SigningKey:
        if self._foreign is None:
            self._foreign = SigningKey(cached_key("untrusted"))
        return self._foreign


class Rotator:
    """A background thread calling ``rotate`` every ``interval`` seconds until ``stop()``."""

    def __init__(self, rotate: Callable[[], object], interval: float) -> None:
        self._rotate = rotate
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="entra-emulator-rotate", daemon=True)

    def start(self) -> None:
        """Start rotating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and join (a rotation in progress finishes first)."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._rotate()
