"""The in-enclave side of nitrokms: NSM client, attested KMS calls, keyring and the RPC service."""

from __future__ import annotations

from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("nitrokms")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0+unknown"


__version__ = _version()
