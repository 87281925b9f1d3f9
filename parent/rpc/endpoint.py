"""Where the enclave service listens: explicit address, CID, or the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from nitrokms.proto.addresses import Address, VsockAddress, parse_address
from nitrokms.proto.errors import AddressError

ENCLAVE_PORT: Final = 5000
# The service's control listener: SetCredentials and Health only, with connection slots of its
# own, for the credential provider (enclave option --control-listen).
CONTROL_PORT: Final = 5001
ENV_ADDRESS: Final = "NITROKMS_ENCLAVE"
ENV_CID: Final = "NITROKMS_ENCLAVE_CID"
MIN_ENCLAVE_CID: Final = 4  # 0-3: hypervisor, loopback, host, parent; never an enclave


def enclave_address(
    address: str | None = None,
    cid: int | str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    port: int = ENCLAVE_PORT,
) -> Address:
    """Resolve the enclave's address: `address`, else `cid`, else $NITROKMS_ENCLAVE, else
    $NITROKMS_ENCLAVE_CID (both CID forms mean `vsock://CID:PORT`, PORT 5000 unless given).

    Raises AddressError naming what is missing or malformed.
    """
    env = os.environ if environ is None else environ
    if address:
        return parse_address(address)
    if cid is not None and cid != "":
        return _vsock(cid, "--cid", port)
    if env.get(ENV_ADDRESS):
        return parse_address(env[ENV_ADDRESS])
    if env.get(ENV_CID):
        return _vsock(env[ENV_CID], f"${ENV_CID}", port)
    raise AddressError(
        f"no enclave address: pass --enclave ADDR or --cid CID, or set ${ENV_ADDRESS} or ${ENV_CID}"
    )


def _vsock(cid: int | str, source: str, port: int) -> VsockAddress:
    if isinstance(cid, str):
        if not cid.strip().isdigit():
            raise AddressError(f"{source}: enclave CID {cid!r} is not a decimal number")
        cid = int(cid)
    if cid < MIN_ENCLAVE_CID:
        raise AddressError(f"{source}: CID {cid} is reserved and cannot be an enclave")
    return VsockAddress(cid, port)
