"""Reading and decrypting KMS `CiphertextForRecipient` blobs (CMS EnvelopedData, BER).

`ber` is a strict hand-written BER reader (see its docstring for why not asn1crypto), `structure`
turns its tree into `EnvelopedInfo` with refusal reasons, `decrypt` picks the key and does the
cryptography through `cryptography`. All pure functions over bytes.
"""

from __future__ import annotations

from nitrokms.enclave.cms.decrypt import (
    decrypt_enveloped_data,
    inspect_enveloped_data,
    subject_key_identifier,
)
from nitrokms.enclave.cms.structure import MAX_BLOB_BYTES, EnvelopedInfo, RecipientInfo
from nitrokms.enclave.errors import (
    CMSError,
    CMSFormatError,
    UnknownRecipientError,
    UnsupportedCMSError,
)

__all__ = [
    "MAX_BLOB_BYTES",
    "CMSError",
    "CMSFormatError",
    "EnvelopedInfo",
    "RecipientInfo",
    "UnknownRecipientError",
    "UnsupportedCMSError",
    "decrypt_enveloped_data",
    "inspect_enveloped_data",
    "subject_key_identifier",
]
