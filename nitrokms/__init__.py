"""nitrokms: attested AWS KMS key fetch for Nitro Enclaves.

One import name, two wings on a shared floor:

- `nitrokms.proto`: pure bytes in, bytes out (frames, RPC messages, addresses, attestation
  documents and their verifier);
- `nitrokms.transport`: the socket edge (vsock, unix, TCP; asyncio and blocking);
- `nitrokms.enclave` and `nitrokms.parent`: the two wings, which never import each other;
- `nitrokms.cli`: the `nitrokms` command, above both wings;
- `nitrokms.sim` (the `sim` extra): the simulated NSM, the local KMS and the simulated world.

In the repository each subpackage keeps its own top-level folder (`enclave/`, `parent/`, `proto/`,
`transport/`, `sim/`); `pyproject.toml` maps them under this package.
"""

from __future__ import annotations

from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("nitrokms")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout, not installed
        return "0.0.0+source"


__version__ = _version()
