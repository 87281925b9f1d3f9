"""The CMS reader's errors; all derive from `enclave.errors.EnclaveError`.

Decryption failures are not here: they are `enclave.errors.DecryptionError`, one opaque error for a
wrong key, bad OAEP, a wrong content-key length and bad padding alike.
"""

from __future__ import annotations

from nitrokms.enclave.errors import EnclaveError


class CMSError(EnclaveError):
    """Root of the CMS reader's own errors."""

    default_code = "cms.Error"


class CMSFormatError(CMSError):
    """The blob is not a well-formed CMS EnvelopedData (the message names what is wrong)."""

    default_code = "cms.Malformed"


class UnsupportedCMSError(CMSFormatError):
    """Well-formed, but uses something the reader refuses (an algorithm, an IV size...)."""

    default_code = "cms.Unsupported"


class UnknownRecipientError(CMSError):
    """No recipient of the blob is a key we hold."""

    default_code = "cms.UnknownRecipient"
