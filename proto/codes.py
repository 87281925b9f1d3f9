"""Every error code, once: the table behind the wire's error replies.

Each code is a dotted name whose first part says where the failure came from. The table is data:
the enclave's and proto's exception classes take their `default_code` from the constants below,
the enclave server answers with them, the parent's RPC client picks the exception class for a
code from its `Family`, and proto/README.md's "Error codes" table is `markdown_table()` (a test
keeps them equal). A `*` entry stands for a namespace whose names come from elsewhere (KMS's
`__type`, the NSM's `ErrorCode`) and matches any code in it that has no entry of its own.

The string values are the wire contract: never change one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final


class Family(Enum):
    """How a client groups codes (the parent's RPC client has one exception class per family)."""

    PROTOCOL = "the request broke the wire protocol"
    KMS = "KMS refused or could not be reached"
    ACCESS_DENIED = "a key policy or IAM denied the call"
    CREDENTIALS = "the enclave has no usable AWS credentials"
    NSM = "the Nitro Secure Module refused"
    DECRYPTION = "decryption failed"
    OTHER = "any other failure"


@dataclass(frozen=True)
class WireCode:
    """One code (or `namespace.*`), what it means, its family, and whether it goes on the wire
    (`wire=False`: raised on the caller's side only, never sent)."""

    code: str
    meaning: str
    family: Family
    wire: bool = True


_NAMESPACE_FAMILY: Final = {"protocol": Family.PROTOCOL, "kms": Family.KMS, "nsm": Family.NSM}
_TABLE: list[WireCode] = []


def _code(code: str, meaning: str, family: Family | None = None, *, wire: bool = True) -> str:
    namespace = code.partition(".")[0]
    _TABLE.append(
        WireCode(code, meaning, family or _NAMESPACE_FAMILY.get(namespace, Family.OTHER), wire)
    )
    return code


# --- protocol: frames and messages ------------------------------------------------------------
MALFORMED_FRAME: Final = _code("protocol.MalformedFrame", "zero-length frame")
FRAME_TOO_LARGE: Final = _code(
    "protocol.FrameTooLarge",
    "length header above the receiver's limit (or a reply too large to send)",
)
TRUNCATED_FRAME: Final = _code("protocol.TruncatedFrame", "stream ended inside a frame")
MALFORMED_MESSAGE: Final = _code(
    "protocol.MalformedMessage",
    "not one CBOR map within the decoding limits, trailing bytes, bad or missing id, wrong "
    "envelope keys",
)
UNSUPPORTED_VERSION: Final = _code("protocol.UnsupportedVersion", "`v` is not 1")
UNKNOWN_OPERATION: Final = _code("protocol.UnknownOperation", "`op` names no operation")
INVALID_FIELD: Final = _code(
    "protocol.InvalidField", "a body field is missing, unknown, of the wrong type or out of range"
)
TOO_MANY_IN_FLIGHT: Final = _code(
    "protocol.TooManyRequests", "too many requests in flight on the connection"
)
PROTOCOL_ERROR: Final = _code("protocol.Error", "a protocol failure with no more specific code")
INVALID_MESSAGE: Final = _code(
    "protocol.InvalidMessage", "this side tried to build a message the protocol forbids", wire=False
)
BAD_ADDRESS: Final = _code(
    "protocol.BadAddress", "a transport address that cannot be parsed or used", wire=False
)
VSOCK_HANDSHAKE: Final = _code(
    "protocol.VsockHandshake",
    "vhost-device-vsock answered a host's CONNECT with something other than `OK [port]`",
    wire=False,
)

# --- KMS ------------------------------------------------------------------------------------------
KMS_ANY: Final = _code(
    "kms.*",
    "KMS refused, with KMS's own exception name (`__type`): `kms.NotFoundException`, "
    "`kms.DisabledException`, `kms.InvalidCiphertextException`, `kms.KMSInvalidStateException`, "
    "`kms.ThrottlingException`, ...",
)
KMS_ACCESS_DENIED: Final = _code(
    "kms.AccessDeniedException",
    "KMS evaluated the key policy (and IAM) and no statement allowed the call",
    Family.ACCESS_DENIED,
)
KMS_ERROR: Final = _code("kms.Error", "a KMS failure with no more specific code")
KMS_VALIDATION: Final = _code(
    "kms.ValidationException", "the KMS request was invalid before it was sent"
)
KMS_UNREACHABLE: Final = _code(
    "kms.Unreachable", "KMS could not be reached (relay down, timeout) after retries"
)
KMS_TLS_FAILED: Final = _code(
    "kms.TLSVerificationFailed",
    "the TLS peer was not KMS (certificate or hostname check failed)",
)
KMS_MISSING_RECIPIENT_REPLY: Final = _code(
    "kms.MissingCiphertextForRecipient",
    "KMS answered an attested call without `CiphertextForRecipient`",
)
KMS_MALFORMED_RESPONSE: Final = _code(
    "kms.MalformedResponse",
    "KMS's success reply was not what the operation returns (not JSON, a field missing or not "
    "base64)",
)

# --- NSM ------------------------------------------------------------------------------------------
NSM_ANY: Final = _code(
    "nsm.*",
    "the Nitro Secure Module refused, with its `ErrorCode` name: `nsm.InvalidArgument`, "
    "`nsm.InvalidIndex`, `nsm.ReadOnlyIndex`, `nsm.InputTooLarge`, `nsm.InternalError`, ...",
)
NSM_UNAVAILABLE: Final = _code("nsm.Unavailable", "there is no NSM device (or libnsm)")
NSM_ERROR: Final = _code("nsm.Error", "an NSM failure with no more specific code")

# --- attestation documents ------------------------------------------------------------------------
ATTESTATION_ERROR: Final = _code("attestation.Error", "an attestation check failed")
ATTESTATION_MALFORMED: Final = _code(
    "attestation.Malformed", "not a well-formed attestation document (CBOR, COSE or payload)"
)
ATTESTATION_BAD_SIGNATURE: Final = _code(
    "attestation.BadSignature", "the COSE signature or a certificate signature does not verify"
)
ATTESTATION_UNTRUSTED_ROOT: Final = _code(
    "attestation.UntrustedRoot", "the chain does not end at the pinned root"
)
ATTESTATION_EXPIRED: Final = _code(
    "attestation.Expired", "a certificate of the chain had expired at the verification time"
)
ATTESTATION_NOT_YET_VALID: Final = _code(
    "attestation.NotYetValid", "a certificate of the chain was not yet valid"
)
ATTESTATION_BAD_CHAIN: Final = _code(
    "attestation.BadChain", "the chain breaks a rule: names, constraints, key usage, algorithms"
)
ATTESTATION_PCR_MISMATCH: Final = _code(
    "attestation.PCRMismatch", "a PCR differs from the expected value"
)
ATTESTATION_NONCE_MISMATCH: Final = _code(
    "attestation.NonceMismatch", "the document's nonce is not the expected one"
)
ATTESTATION_TOO_OLD: Final = _code(
    "attestation.TooOld", "the document is older than the allowed maximum age"
)
ATTESTATION_FROM_FUTURE: Final = _code(
    "attestation.FromFuture", "the document's timestamp lies too far in the future"
)
ATTESTATION_DEBUG_MODE: Final = _code(
    "attestation.DebugMode", "a debug-mode document (PCR0-2 zero) where debug was not allowed"
)

# --- CMS (CiphertextForRecipient) and decryption --------------------------------------------------
CMS_ERROR: Final = _code("cms.Error", "a CiphertextForRecipient could not be read")
CMS_MALFORMED: Final = _code("cms.Malformed", "not a well-formed CMS EnvelopedData")
CMS_UNSUPPORTED: Final = _code(
    "cms.Unsupported", "well-formed CMS using something the reader refuses (an algorithm, ...)"
)
CMS_UNKNOWN_RECIPIENT: Final = _code(
    "cms.UnknownRecipient", "no recipient of the CMS blob is a key the enclave holds"
)
DECRYPTION_FAILED: Final = _code(
    "crypto.DecryptionFailed",
    "decryption failed (wrong key, wrong context, tampering); deliberately opaque",
    Family.DECRYPTION,
)

# --- the enclave service --------------------------------------------------------------------------
CREDENTIALS_MISSING: Final = _code(
    "enclave.CredentialsMissing", "no credentials pushed yet", Family.CREDENTIALS
)
CREDENTIALS_EXPIRED: Final = _code(
    "enclave.CredentialsExpired", "the pushed credentials expired", Family.CREDENTIALS
)
CREDENTIALS_INVALID: Final = _code(
    "enclave.CredentialsInvalid", "the pushed credentials are malformed", Family.CREDENTIALS
)
REGION_MISMATCH: Final = _code(
    "enclave.RegionMismatch", "SetCredentials names another region than the service serves"
)
UNKNOWN_HANDLE: Final = _code(
    "enclave.UnknownHandle",
    "no data key under that handle (never issued, forgotten, evicted or expired)",
)
CONTEXT_MISMATCH: Final = _code(
    "enclave.ContextMismatch",
    "Seal with a handle and an encryption context other than the data key's",
)
MALFORMED_ENVELOPE: Final = _code(
    "enclave.MalformedEnvelope", "Unseal input is not an envelope this service reads"
)
ENVELOPE_TOO_LARGE: Final = _code(
    "enclave.EnvelopeTooLarge", "the envelope would exceed the wire limit"
)
UNSUPPORTED_DATA_KEY: Final = _code(
    "enclave.UnsupportedDataKey", "a data key that is not 32 bytes cannot seal (AES-256-GCM)"
)
KEY_POOL_UNAVAILABLE: Final = _code(
    "enclave.KeyPoolUnavailable", "no recipient RSA key could be had"
)
NETWORK_SETUP_FAILED: Final = _code(
    "enclave.NetworkSetupFailed", "the in-enclave KMS listener could not start"
)
TIMEOUT: Final = _code(
    "enclave.Timeout", "the request exceeded the service's per-request time limit"
)
TOO_MANY_CONNECTIONS: Final = _code("enclave.TooManyConnections", "connection limit reached")
TOO_MANY_BAD_REQUESTS: Final = _code(
    "enclave.TooManyBadRequests",
    "the connection sent more invalid requests than `--max-bad-requests`; it is closed",
)
OPERATION_NOT_ALLOWED: Final = _code(
    "enclave.OperationNotAllowed",
    "this listener does not serve that operation (the control listener serves SetCredentials "
    "and Health only)",
)
SHUTTING_DOWN: Final = _code("enclave.ShuttingDown", "the service is stopping")
INTERNAL_ERROR: Final = _code(
    "enclave.InternalError",
    "an unexpected failure; details are in the enclave's log, never on the wire",
)
ENCLAVE_ERROR: Final = _code("enclave.Error", "an enclave failure with no more specific code")

# --- the parent's RPC client (raised on the caller's side) ---------------------------------------
CLIENT_ERROR: Final = _code("client.Error", "an RPC client failure", wire=False)
CLIENT_TIMEOUT: Final = _code(
    "client.Timeout",
    "no reply within the request's timeout (the request was cancelled)",
    wire=False,
)
CONNECTION_FAILED: Final = _code(
    "client.ConnectionFailed",
    "the enclave could not be reached within the connect timeout",
    wire=False,
)
CONNECTION_LOST: Final = _code(
    "client.ConnectionLost", "the connection dropped with the request in flight", wire=False
)
CLIENT_CLOSED: Final = _code("client.Closed", "the client was closed", wire=False)

TABLE: Final[tuple[WireCode, ...]] = tuple(_TABLE)
_BY_CODE: Final = {entry.code: entry for entry in TABLE}


def lookup(code: str) -> WireCode | None:
    """The entry for `code`: its own, else its namespace's `*` entry, else None (unknown)."""
    entry = _BY_CODE.get(code)
    if entry is None:
        entry = _BY_CODE.get(code.partition(".")[0] + ".*")
    return entry


def family(code: str) -> Family:
    """The family of `code`; a code the table does not know (a newer peer's) takes its
    namespace's family: `protocol.*`, `kms.*` and `nsm.*` have one, every other is OTHER."""
    entry = lookup(code)
    if entry is not None:
        return entry.family
    return _NAMESPACE_FAMILY.get(code.partition(".")[0], Family.OTHER)


def markdown_table(*, wire: bool = True) -> str:
    """The codes that go on the wire (or, with `wire=False`, those that never do) as the
    Markdown table proto/README.md shows."""
    rows = ["| code | meaning |", "|---|---|"]
    rows += [f"| `{e.code}` | {e.meaning} |" for e in TABLE if e.wire == wire]
    return "\n".join(rows)
