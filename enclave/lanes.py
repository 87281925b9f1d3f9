"""Which lane of the scheduler an operation runs in: "local" if it never waits on KMS.

Local: Health, Describe, SetCredentials, ForgetKey, Attest (the NSM is in the enclave), Seal with
a handle, and Unseal when the keyring already holds the envelope's data key. KMS: GenerateDataKey,
LoadDataKey, Seal with a key id, and Unseal whose key must be loaded through attested Decrypt. An
envelope that does not parse goes to the local lane, where it fails at once. The classification
is a prediction made on the event loop: a key evicted between it and the run makes one Unseal
wait on KMS from the local lane, which is bounded by the request's deadline like any other.
"""

from __future__ import annotations

from typing import Final, Literal

from nitrokms.enclave import envelope
from nitrokms.enclave.errors import MalformedEnvelopeError
from nitrokms.enclave.keyring import Keyring
from nitrokms.proto import messages as m

Lane = Literal["local", "kms"]
LOCAL: Final = "local"
KMS: Final = "kms"
LOCAL_OPERATIONS: Final = frozenset({"Health", "Describe", "SetCredentials", "ForgetKey", "Attest"})


def lane_by_operation(body: m.Body) -> Lane:
    """The lane from the request alone (an Unseal counts as KMS-bound)."""
    if body.operation in LOCAL_OPERATIONS:
        return LOCAL
    if isinstance(body, m.SealRequest) and body.handle is not None:
        return LOCAL
    return KMS


class LaneClassifier:
    """`lane_by_operation`, refined for Unseal by asking the keyring whether its key is held."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def __call__(self, body: m.Body) -> Lane:
        if not isinstance(body, m.UnsealRequest):
            return lane_by_operation(body)
        try:
            sealed = envelope.parse(body.envelope)
        except MalformedEnvelopeError:
            return LOCAL
        held = self.keyring.find(sealed.ciphertext_blob, sealed.encryption_context)
        return LOCAL if held is not None else KMS
