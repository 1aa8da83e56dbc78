"""Local Entra workload-identity emulator (optional extra ``entra-tokend[emulator]``).

``Emulator`` plays a Kubernetes cluster (projected service-account token, OIDC issuer) and an
Entra tenant (v2 token endpoint with federated credentials) on loopback; ``Fault`` describes
misbehaviour to inject. The daemon never imports this package.
"""

from entra_tokend.emulator.server import (
    App,
    Emulator,
    Fault,
    FaultKind,
    FederatedCredential,
    RecordedRequest,
)

__all__ = ["App", "Emulator", "Fault", "FaultKind", "FederatedCredential", "RecordedRequest"]
