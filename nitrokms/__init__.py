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

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str


@functools.cache
def _version() -> str:
    from importlib import metadata  # noqa: PLC0415 - ~20 ms; every command would pay it

    try:
        return metadata.version("nitrokms")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout, not installed
        return "0.0.0+source"


def __getattr__(name: str) -> Any:
    """`__version__`, read from the installed metadata on first use."""
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
