"""HMAC-key operations: GenerateMac and VerifyMac (HMAC_SHA_224/256/384/512, RFC 2104).

An HMAC key spec allows exactly its own algorithm (HMAC_256 -> HMAC_SHA_256); any other is
InvalidKeyUsageException, and a MAC that does not verify is KMSInvalidMacException, as in KMS.
"""

from __future__ import annotations

from typing import Any

from nitrokms.sim.kms import algorithms
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.keyspecs import GENERATE_VERIFY_MAC, MAC_ALGORITHMS
from nitrokms.sim.kms.operations import Operations, b64, dry_run, incompatible, require_usage
from nitrokms.sim.kms.params import Params
from nitrokms.sim.kms.records import Key

MAX_MESSAGE_BYTES = 4096
MAX_MAC_BYTES = 6144


class MacOperations(Operations):
    OPERATIONS = ("GenerateMac", "VerifyMac")

    def _mac_key(self, p: Params, caller: Credential, operation: str) -> tuple[Key, str]:
        algorithm = p.required_enum("MacAlgorithm", MAC_ALGORITHMS)
        conditions = {"kms:MacAlgorithm": algorithm}
        key = self.authorised_key(p, caller, f"kms:{operation}", conditions=conditions)
        require_usage(key, GENERATE_VERIFY_MAC, operation)
        if algorithm != key.spec.mac:
            raise incompatible(algorithm, key)
        return key, algorithm

    def op_GenerateMac(self, p: Params, caller: Credential) -> dict[str, Any]:
        message = p.required_blob("Message", max_len=MAX_MESSAGE_BYTES)
        key, algorithm = self._mac_key(p, caller, "GenerateMac")
        tag = algorithms.mac(key.material, algorithm, message)
        dry_run(p)
        return {"Mac": b64(tag), "MacAlgorithm": algorithm, "KeyId": key.arn}

    def op_VerifyMac(self, p: Params, caller: Credential) -> dict[str, Any]:
        message = p.required_blob("Message", max_len=MAX_MESSAGE_BYTES)
        tag = p.required_blob("Mac", max_len=MAX_MAC_BYTES)
        key, algorithm = self._mac_key(p, caller, "VerifyMac")
        algorithms.verify_mac(key.material, algorithm, message, tag)
        dry_run(p)
        return {"KeyId": key.arn, "MacValid": True, "MacAlgorithm": algorithm}
