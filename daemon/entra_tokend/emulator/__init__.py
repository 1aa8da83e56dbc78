"""Local Entra workload-identity emulator (optional extra ``entra-tokend[emulator]``).

``Emulator`` plays a Kubernetes cluster (projected service-account token, OIDC issuer), an
Entra tenant (v2 token endpoint with federated credentials), Azure Container Registry's token
service and, on request, the AKS identity-binding token proxy, all on loopback; ``Fault``
describes misbehaviour to inject. The daemon never imports this package, and this package
imports nothing of the daemon's.

Modules, one role each: ``issuer`` (cluster), ``tenant`` (Entra), ``registry`` (ACR token
service), ``proxy`` (identity binding), ``faults``, ``recorder``, ``http`` + ``routes`` +
``admin`` (the wire), ``pki`` and ``_crypto`` (keys, JWTs, certificates), ``kubelet``
(projected-volume writes), ``errors`` (Entra's error bodies), ``server`` (the facade).
"""

from entra_tokend.emulator.server import (
    App,
    Emulator,
    Fault,
    FaultKind,
    FaultTarget,
    FederatedCredential,
    RecordedRequest,
    RegistrySetup,
)

__all__ = [
    "App",
    "Emulator",
    "Fault",
    "FaultKind",
    "FaultTarget",
    "FederatedCredential",
    "RecordedRequest",
    "RegistrySetup",
]
