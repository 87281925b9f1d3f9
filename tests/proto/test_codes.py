"""The error-code table (`proto.codes`) is the one source: README, exception classes and the RPC
client's mapping agree with it, and no code's string value ever changes."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import nitrokms.enclave
import nitrokms.parent
import nitrokms.proto
import pytest
from nitrokms.parent.rpc import errors as rpc_errors
from nitrokms.proto import codes
from nitrokms.proto.codes import Family
from nitrokms.proto.errors import CodedError
from nitrokms.proto.messages import ERROR_CODE_PATTERN

README = Path(__file__).resolve().parents[2] / "proto" / "README.md"

# Every code that existed before the table did, spelt out here so that a change to any string
# value in codes.py fails a test: these are on the wire and in users' error handling.
PUBLISHED = """
protocol.MalformedFrame protocol.FrameTooLarge protocol.TruncatedFrame protocol.MalformedMessage
protocol.UnsupportedVersion protocol.UnknownOperation protocol.InvalidField
protocol.TooManyRequests protocol.Error protocol.InvalidMessage protocol.BadAddress
kms.AccessDeniedException kms.Error kms.ValidationException kms.Unreachable
kms.TLSVerificationFailed kms.MissingCiphertextForRecipient nsm.Unavailable nsm.Error
attestation.Error attestation.Malformed attestation.BadSignature attestation.UntrustedRoot
attestation.Expired attestation.NotYetValid attestation.BadChain attestation.PCRMismatch
attestation.NonceMismatch attestation.TooOld attestation.FromFuture attestation.DebugMode
cms.Error cms.Malformed cms.Unsupported cms.UnknownRecipient crypto.DecryptionFailed
enclave.CredentialsMissing enclave.CredentialsExpired enclave.CredentialsInvalid
enclave.RegionMismatch enclave.UnknownHandle enclave.ContextMismatch enclave.MalformedEnvelope
enclave.EnvelopeTooLarge enclave.UnsupportedDataKey enclave.KeyPoolUnavailable
enclave.NetworkSetupFailed enclave.Timeout enclave.TooManyConnections enclave.ShuttingDown
enclave.InternalError enclave.Error client.Error client.Timeout client.ConnectionFailed
client.ConnectionLost client.Closed
""".split()  # noqa: SIM905 - a block of text reads better here


def _all_coded_error_classes() -> set[type[CodedError]]:
    for package in (nitrokms.proto, nitrokms.enclave, nitrokms.parent):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    found: set[type[CodedError]] = set()
    pending: list[type[CodedError]] = [CodedError]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("nitrokms.") and sub not in found:
                found.add(sub)
                pending.append(sub)
    return found


def test_readme_tables_are_the_codes_table() -> None:
    text = README.read_text()
    for wire in (True, False):
        expected = codes.markdown_table(wire=wire)
        assert expected in text, f"proto/README.md must hold, verbatim:\n{expected}"


def test_no_published_code_changed_or_went_missing() -> None:
    table = {entry.code for entry in codes.TABLE}
    assert set(PUBLISHED) <= table
    assert len(table) == len(codes.TABLE)  # no code listed twice


def test_every_code_is_well_formed() -> None:
    for entry in codes.TABLE:
        name = entry.code.removesuffix(".*") + (".X" if entry.code.endswith("*") else "")
        assert re.fullmatch(ERROR_CODE_PATTERN, name), entry.code
        assert len(entry.code) <= 64


def test_every_exception_class_takes_its_code_from_the_table() -> None:
    classes = _all_coded_error_classes()
    assert len(classes) > 40  # proto, attestation, enclave (with nsm and cms), parent rpc
    for cls in classes:
        entry = codes.lookup(cls.default_code)
        assert entry is not None, cls
        assert entry.code == cls.default_code, cls


@pytest.mark.parametrize("entry", codes.TABLE, ids=lambda e: e.code)
def test_the_client_maps_every_wire_code_to_its_familys_class(entry: codes.WireCode) -> None:
    code = entry.code.replace("*", "SomethingNew")
    expected = {
        Family.PROTOCOL: rpc_errors.ProtocolViolationError,
        Family.KMS: rpc_errors.KMSError,
        Family.ACCESS_DENIED: rpc_errors.AccessDeniedError,
        Family.CREDENTIALS: rpc_errors.CredentialsError,
        Family.NSM: rpc_errors.NSMError,
        Family.DECRYPTION: rpc_errors.DecryptionFailedError,
        Family.OTHER: rpc_errors.RemoteError,
    }[entry.family]
    assert rpc_errors.remote_error_class(code) is expected


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("kms.AccessDeniedException", rpc_errors.AccessDeniedError),
        ("kms.NotFoundException", rpc_errors.KMSError),
        ("nsm.InvalidIndex", rpc_errors.NSMError),
        ("protocol.SomethingNewer", rpc_errors.ProtocolViolationError),
        ("enclave.CredentialsExpired", rpc_errors.CredentialsError),
        ("crypto.DecryptionFailed", rpc_errors.DecryptionFailedError),
        ("enclave.UnknownHandle", rpc_errors.RemoteError),
        ("vendor.Custom", rpc_errors.RemoteError),
    ],
)
def test_known_and_unknown_codes_map_as_callers_expect(
    code: str, cls: type[rpc_errors.RemoteError]
) -> None:
    assert rpc_errors.remote_error_class(code) is cls
