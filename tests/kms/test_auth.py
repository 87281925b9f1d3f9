"""SigV4 verification: every failure gets the error type AWS uses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from botocore.exceptions import ClientError
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.exceptions import InvalidSignatureException
from nitrokms.sim.kms.server import LocalKMS

from . import rawhttp
from .conftest import ADMIN, ENCLAVE, client_for


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = excinfo.value.response["Error"]
    return str(err["Code"]), str(err["Message"])


def test_valid_session_credentials_are_accepted(enclave: Any) -> None:
    assert len(enclave.generate_random(NumberOfBytes=8)["Plaintext"]) == 8


def test_wrong_secret_is_invalid_signature(local_kms: LocalKMS) -> None:
    client = client_for(local_kms.url, local_kms.ca_path, Credential(ADMIN.access_key_id, "wrong"))
    with pytest.raises(ClientError) as excinfo:
        client.list_keys()
    code, message = _error(excinfo)
    assert code == "InvalidSignatureException"
    assert message.startswith("The request signature we calculated does not match")


def test_unknown_access_key_is_unrecognized_client(local_kms: LocalKMS) -> None:
    client = client_for(local_kms.url, local_kms.ca_path, Credential("AKIANOBODY", "x"))
    with pytest.raises(ClientError) as excinfo:
        client.list_keys()
    assert _error(excinfo) == (
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    )


@pytest.mark.parametrize("token", [None, "other-token"])
def test_missing_or_wrong_session_token_is_unrecognized(local_kms: LocalKMS, token: Any) -> None:
    credential = Credential(ENCLAVE.access_key_id, ENCLAVE.secret_access_key, session_token=token)
    client = client_for(local_kms.url, local_kms.ca_path, credential)
    with pytest.raises(ClientError) as excinfo:
        client.list_keys()
    assert _error(excinfo)[0] == "UnrecognizedClientException"


def test_token_on_a_credential_without_one_is_unrecognized(local_kms: LocalKMS) -> None:
    credential = Credential(ADMIN.access_key_id, ADMIN.secret_access_key, session_token="t")
    client = client_for(local_kms.url, local_kms.ca_path, credential)
    with pytest.raises(ClientError) as excinfo:
        client.list_keys()
    assert _error(excinfo)[0] == "UnrecognizedClientException"


@pytest.mark.parametrize(
    ("minutes", "prefix"), [(-10, "Signature expired: "), (10, "Signature not yet current: ")]
)
def test_skewed_clock_is_rejected(
    local_kms: LocalKMS, monkeypatch: pytest.MonkeyPatch, minutes: int, prefix: str
) -> None:
    client = client_for(local_kms.url, local_kms.ca_path, ADMIN)
    skewed = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=minutes)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: skewed)
    with pytest.raises(ClientError) as excinfo:
        client.list_keys()
    code, message = _error(excinfo)
    assert code == "InvalidSignatureException"
    assert message.startswith(prefix + skewed.strftime("%Y%m%dT%H%M%SZ"))


def test_small_clock_skew_is_tolerated(
    local_kms: LocalKMS, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(local_kms.url, local_kms.ca_path, ADMIN)
    skewed = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=4)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: skewed)
    assert "Keys" in client.list_keys()


def test_wrong_region_scope_is_invalid_signature(local_kms: LocalKMS) -> None:
    import boto3

    other = boto3.client(
        "kms",
        endpoint_url=local_kms.url,
        region_name="eu-west-1",
        verify=str(local_kms.ca_path),
        aws_access_key_id=ADMIN.access_key_id,
        aws_secret_access_key=ADMIN.secret_access_key,
    )
    with pytest.raises(ClientError) as excinfo:
        other.list_keys()
    code, message = _error(excinfo)
    assert code == "InvalidSignatureException"
    assert "eu-west-1" in message


def test_missing_authorization_is_missing_token(local_kms: LocalKMS) -> None:
    conn = rawhttp.connect(local_kms.url, local_kms.ca_path)
    try:
        status, body = rawhttp.post(
            conn,
            {"X-Amz-Target": "TrentService.ListKeys", "Content-Type": "application/x-amz-json-1.1"},
            b"{}",
        )
    finally:
        conn.close()
    assert status == 400
    assert body["__type"] == "MissingAuthenticationTokenException"


def test_tampered_body_is_invalid_signature(local_kms: LocalKMS) -> None:
    headers = rawhttp.signed_headers(
        local_kms.url, ADMIN, "TrentService.GenerateRandom", b'{"NumberOfBytes": 8}'
    )
    conn = rawhttp.connect(local_kms.url, local_kms.ca_path)
    try:
        status, body = rawhttp.post(conn, headers, b'{"NumberOfBytes": 9}')
    finally:
        conn.close()
    assert (status, body["__type"]) == (400, "InvalidSignatureException")


def test_garbled_authorization_is_incomplete_signature(local_kms: LocalKMS) -> None:
    headers = rawhttp.signed_headers(local_kms.url, ADMIN, "TrentService.ListKeys", b"{}")
    headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=AKIA/x"
    conn = rawhttp.connect(local_kms.url, local_kms.ca_path)
    try:
        status, body = rawhttp.post(conn, headers, b"{}")
    finally:
        conn.close()
    assert (status, body["__type"]) == (400, "IncompleteSignatureException")


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("https://kms.us-east-1.amazonaws.com/", {"X-Amz-Target": "TrentService.ListKeys"}),
        (
            "https://kms.us-east-1.amazonaws.com/a%20b/./c/../d?b=2&a=1&a=0",
            {"X-Custom": "  x   y  "},
        ),
    ],
)
def test_canonicalisation_matches_botocore_signer(url: str, headers: dict[str, str]) -> None:
    from urllib.parse import urlsplit

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from nitrokms.sim.kms.auth import ReceivedRequest, SigV4Verifier

    request = AWSRequest(method="POST", url=url, data=b'{"a": 1}', headers=headers)
    SigV4Auth(
        Credentials(ADMIN.access_key_id, ADMIN.secret_access_key), "kms", "us-east-1"
    ).add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    wire_headers = [("Host", parts.netloc), *prepared.headers.items()]
    received = ReceivedRequest("POST", target, wire_headers, prepared.body)
    verifier = SigV4Verifier([ADMIN], region="us-east-1")
    assert verifier.authenticate(received) == ADMIN
    tampered = ReceivedRequest("POST", target + "x", wire_headers, prepared.body)
    with pytest.raises(InvalidSignatureException, match="signature we calculated"):
        verifier.authenticate(tampered)
