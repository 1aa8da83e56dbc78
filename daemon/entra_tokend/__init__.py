"""entra-tokend: Entra Workload ID access tokens as files, for programs without an Azure SDK."""

__version__ = "0.1.0"
