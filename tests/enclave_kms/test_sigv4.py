"""SigV4 for the lean KMS path against botocore's SigV4Auth: the same canonical request and the
same Authorization header for any credentials, region, host, body and time."""

from __future__ import annotations

from datetime import UTC, datetime
from unittest import mock

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.enclave.kms_wire import encode_body, request_headers
from nitrokms.enclave.sigv4 import Signer, canonical_request, host_header

ASCII_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60)
TOKENS = st.none() | ASCII_TEXT
REGIONS = st.sampled_from(["us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1", "il-central-1"])
HOSTS = st.sampled_from(["kms.us-east-1.amazonaws.com", "127.0.0.1", "vpce-1.kms.example", "::1"])
PORTS = st.sampled_from([443, 8443, 4566])
OPERATIONS = st.sampled_from(["GenerateDataKey", "Decrypt", "GenerateRandom"])
CONTEXTS = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=4)
TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)


class RecordingSigV4Auth(SigV4Auth):  # type: ignore[misc]
    """botocore's signer, keeping the canonical request it signed."""

    signed_request = ""

    def canonical_request(self, request: AWSRequest) -> str:
        self.signed_request = super().canonical_request(request)
        return self.signed_request


def botocore_signed(  # noqa: PLR0917 - one argument per signing input
    access_key: str, secret: str, token: str | None, region: str, url: str, headers, body, now
) -> tuple[AWSRequest, str]:
    """(the request botocore signed, its canonical request)."""
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers[1:]))
    auth = RecordingSigV4Auth(Credentials(access_key, secret, token), "kms", region)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        auth.add_auth(request)
    return request, auth.signed_request


@settings(max_examples=200, deadline=None)
@given(
    access_key=ASCII_TEXT, secret=st.text(min_size=1, max_size=60), token=TOKENS,
    region=REGIONS, host=HOSTS, port=PORTS, operation=OPERATIONS, context=CONTEXTS, now=TIMES,
)  # fmt: skip
def test_signature_matches_botocore(  # noqa: PLR0917
    access_key, secret, token, region, host, port, operation, context, now
):
    body = encode_body({"KeyId": "alias/ключ", "EncryptionContext": context, "Blob": b"\x00\xff"})
    host_value = host_header(host, port, 443)
    headers = request_headers(host_value, operation)
    added = Signer(access_key, secret, token, region).sign(headers, body, now.replace(tzinfo=UTC))
    netloc = f"[{host}]" if ":" in host else host
    url = f"https://{netloc}" + ("" if port == 443 else f":{port}") + "/"
    theirs, their_canonical = botocore_signed(
        access_key, secret, token, region, url, headers, body, now
    )
    ours = dict(added)
    assert canonical_request([*headers, *added[:-1]], body)[0] == their_canonical
    assert ours["Authorization"] == theirs.headers["Authorization"]
    assert ours["X-Amz-Date"] == theirs.headers["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == theirs.headers.get("X-Amz-Security-Token")


def test_the_signing_key_is_derived_once_per_day():
    signer = Signer("AKID", "secret", None, "us-east-1")
    headers = request_headers("kms.us-east-1.amazonaws.com", "GenerateRandom")
    with mock.patch("nitrokms.enclave.sigv4.signing_key", wraps=__import__(
        "nitrokms.enclave.sigv4", fromlist=["signing_key"]).signing_key) as derive:  # fmt: skip
        for second in range(5):
            signer.sign(headers, b"{}", datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC))
        signer.sign(headers, b"{}", datetime(2026, 1, 2, tzinfo=UTC))
    assert derive.call_count == 2


def test_signer_repr_hides_the_secret_and_token():
    text = repr(Signer("AKIDVISIBLE", "very-secret", "session-token-value", "us-east-1"))
    assert "AKIDVISIBLE" in text
    assert "very-secret" not in text
    assert "session-token-value" not in text
