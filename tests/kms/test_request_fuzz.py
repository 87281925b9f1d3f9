"""The fuzz invariant for every operation: any JSON body gets a reply or a typed KMS error (400),
never an internal error, and never a crash. Bodies mix real key references (every key kind, an
alias, a grant token) with junk of every JSON type under the parameter names KMS uses."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nitrokms.sim.kms.auth import ReceivedRequest, SigV4Verifier
from nitrokms.sim.kms.models import KeyStore
from nitrokms.sim.kms.recipient import RecipientReader
from nitrokms.sim.kms.responses import OPERATIONS, KMSApplication
from nitrokms.sim.nsm.pki import SimulatedPKI

from . import rawhttp
from .conftest import ADMIN, CREDENTIALS, REGION

URL = "https://kms.us-east-1.amazonaws.com"
PARAMETERS = (
    "KeyId", "Plaintext", "CiphertextBlob", "EncryptionContext", "EncryptionAlgorithm", "KeySpec",
    "KeyUsage", "NumberOfBytes", "GrantTokens", "Message", "MessageType", "Signature",
    "SigningAlgorithm", "PublicKey", "KeyAgreementAlgorithm", "KeyPairSpec", "MacAlgorithm", "Mac",
    "SourceKeyId", "DestinationKeyId", "SourceEncryptionContext", "DestinationEncryptionContext",
    "SourceEncryptionAlgorithm", "DestinationEncryptionAlgorithm", "GranteePrincipal",
    "RetiringPrincipal", "Operations", "Constraints", "Name", "GrantId", "GrantToken", "Tags",
    "TagKeys", "RotationPeriodInDays", "IncludeKeyMaterial", "Limit", "Marker", "Description",
    "PolicyName", "Policy", "DryRun", "Recipient",
)  # fmt: skip


class Harness:
    """An in-process KMS application with one key of each kind, an alias and a grant."""

    def __init__(self, state: Path, pki: SimulatedPKI) -> None:
        self.app = KMSApplication(
            KeyStore(state, region=REGION, account="111122223333"),
            SigV4Verifier(CREDENTIALS, region=REGION),
            RecipientReader(pki.root_certificate_pem),
        )
        kinds: tuple[dict[str, str], ...] = (
            {}, {"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"},
            {"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"},
            {"KeySpec": "ECC_NIST_P384", "KeyUsage": "KEY_AGREEMENT"},
            {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"},
        )  # fmt: skip
        self.keys = [self.call("CreateKey", kind)["KeyMetadata"]["Arn"] for kind in kinds]
        self.call("CreateAlias", {"AliasName": "alias/fuzz", "TargetKeyId": self.keys[0]})
        grant = {"KeyId": self.keys[0], "GranteePrincipal": ADMIN.principal_arn,
                 "Operations": ["Decrypt"]}  # fmt: skip
        self.token = self.call("CreateGrant", grant)["GrantToken"]
        blob = self.call("Encrypt", {"KeyId": self.keys[0], "Plaintext": "aGk="})
        self.blob = blob["CiphertextBlob"]

    def reply(self, operation: str, body: bytes) -> tuple[int, dict[str, Any]]:
        target = f"TrentService.{operation}"
        headers = [("Host", URL.removeprefix("https://"))]
        headers += rawhttp.signed_headers(URL, ADMIN, target, body).items()
        response = self.app.handle(ReceivedRequest("POST", "/", headers, body))
        return response.status, response.body

    def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        status, body = self.reply(operation, json.dumps(params).encode())
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, pki: SimulatedPKI) -> Harness:
    return Harness(tmp_path_factory.mktemp("fuzz-kms"), pki)


junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_body_is_answered_or_refused_with_a_typed_error(
    harness: Harness, data: st.DataObject
) -> None:
    real = st.sampled_from(
        [*harness.keys, "alias/fuzz", harness.token, harness.blob,
         base64.b64encode(b"\x00" * 40).decode(), "RSAES_OAEP_SHA_256", "ECDSA_SHA_256", "DIGEST",
         "HMAC_SHA_256", "ECDH", "ECC_NIST_P256", "SYMMETRIC_DEFAULT", "AES_256", ["Decrypt"],
         [{"TagKey": "a", "TagValue": "b"}], {"EncryptionContextSubset": {"a": "b"}}]
    )  # fmt: skip
    operation = data.draw(st.sampled_from(OPERATIONS))
    body = data.draw(st.dictionaries(st.sampled_from(PARAMETERS), real | junk, max_size=6))
    status, reply = harness.reply(operation, json.dumps(body).encode())
    assert status in (200, 400), reply
    if status == 400:
        assert reply["__type"] not in ("KMSInternalException", "UnknownOperationException")
        assert isinstance(reply["message"], str)
