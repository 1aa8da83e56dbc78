"""Exchange stages: how to talk to a token service, and nothing about when or where to.

``entra`` performs the Entra v2 client-credentials request with a client assertion (direct,
or through an AKS identity-binding token proxy); ``transport`` holds the pooled HTTP clients;
``tokenproxy`` the token proxy's TLS (SNI name, rotating CA); ``errors`` is the failure
hierarchy, one class per ``Reason``. A stage is anything with ``async exchange(identity,
scope, assertion) -> AccessToken`` raising ``ExchangeError`` (the runner's ``Exchange`` protocol).
"""

from entra_tokend.exchange.acr import AcrExchange
from entra_tokend.exchange.entra import (
    MAX_BODY_BYTES,
    EntraExchange,
    error_details,
    parse_retry_after,
    parse_token_response,
    proxied_url,
    request_url,
    token_endpoint,
)
from entra_tokend.exchange.errors import (
    ClientError,
    ErrorDetails,
    ExchangeError,
    InvalidResponse,
    NetworkError,
    RequestTimeout,
    ServerError,
    Throttled,
)
from entra_tokend.exchange.transport import ClientPool

__all__ = [
    "MAX_BODY_BYTES",
    "AcrExchange",
    "ClientError",
    "ClientPool",
    "EntraExchange",
    "ErrorDetails",
    "ExchangeError",
    "InvalidResponse",
    "NetworkError",
    "RequestTimeout",
    "ServerError",
    "Throttled",
    "error_details",
    "parse_retry_after",
    "parse_token_response",
    "proxied_url",
    "request_url",
    "token_endpoint",
]
