"""The HTTPS edge: keep-alive, body limits, protocol errors, concurrency, TLS names."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from typing import Any

import pytest
from nitrokms.sim.kms.server import MAX_BODY_BYTES, LocalKMS

from . import rawhttp
from .conftest import ADMIN, client_for


def test_connection_is_kept_alive_across_requests(local_kms: LocalKMS) -> None:
    body = b'{"NumberOfBytes": 16}'
    conn = rawhttp.connect(local_kms.url, local_kms.ca_path)
    try:
        headers = rawhttp.signed_headers(local_kms.url, ADMIN, "TrentService.GenerateRandom", body)
        assert rawhttp.post(conn, headers, body)[0] == 200
        first_socket = conn.sock
        headers = rawhttp.signed_headers(local_kms.url, ADMIN, "TrentService.GenerateRandom", body)
        assert rawhttp.post(conn, headers, body)[0] == 200
        assert conn.sock is first_socket
    finally:
        conn.close()


def test_oversized_body_is_refused_before_it_is_sent(local_kms: LocalKMS) -> None:
    conn = rawhttp.connect(local_kms.url, local_kms.ca_path)
    try:
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        conn.putheader("X-Amz-Target", "TrentService.ListKeys")
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["__type"] == "RequestEntityTooLargeException"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("target", "body", "code"),
    [
        ("TrentService.NoSuchThing", b"{}", "UnknownOperationException"),
        ("Other.ListKeys", b"{}", "UnknownOperationException"),
        ("TrentService.ListKeys", b"{not json", "SerializationException"),
        ("TrentService.ListKeys", b"[1, 2]", "SerializationException"),
        ("TrentService.ListKeys", b"[" * 200_000, "SerializationException"),
    ],
)
def test_protocol_errors(local_kms: LocalKMS, target: str, body: bytes, code: str) -> None:
    conn = rawhttp.connect(local_kms.url, local_kms.ca_path)
    try:
        status, reply = rawhttp.post(
            conn, rawhttp.signed_headers(local_kms.url, ADMIN, target, body), body
        )
    finally:
        conn.close()
    assert (status, reply["__type"]) == (400, code)
    assert reply["message"]


def test_internal_failure_is_a_500_without_details(
    tmp_path: Any, pki: Any, make_document: Any
) -> None:
    def broken(plaintext: bytes, spki: bytes) -> bytes:
        raise RuntimeError("encoder exploded")

    with LocalKMS(tmp_path, [ADMIN], pki.root_certificate_pem, encrypt_for_recipient=broken) as kms:
        client = client_for(kms.url, kms.ca_path, ADMIN)
        recipient = {
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            "AttestationDocument": make_document(),
        }
        from botocore.exceptions import ClientError

        with pytest.raises(ClientError) as excinfo:
            client.generate_random(NumberOfBytes=8, Recipient=recipient)
    assert excinfo.value.response["Error"]["Code"] == "KMSInternalException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert "exploded" not in excinfo.value.response["Error"]["Message"]


def test_many_concurrent_clients_each_succeed(local_kms: LocalKMS, admin: Any) -> None:
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    failures: list[BaseException] = []
    rounds, workers = 5, 16

    def worker(index: int) -> None:
        try:
            client = client_for(local_kms.url, local_kms.ca_path, ADMIN)
            for n in range(rounds):
                context = {"worker": str(index), "n": str(n)}
                reply = client.generate_data_key(
                    KeyId=key_id, KeySpec="AES_256", EncryptionContext=context
                )
                again = client.decrypt(
                    CiphertextBlob=reply["CiphertextBlob"], EncryptionContext=context
                )
                assert again["Plaintext"] == reply["Plaintext"]
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


@pytest.mark.parametrize("hostname", ["localhost", "kms.us-east-1.amazonaws.com", "127.0.0.1"])
def test_certificate_verifies_for_every_served_name(local_kms: LocalKMS, hostname: str) -> None:
    context = ssl.create_default_context(cafile=str(local_kms.ca_path))
    port = int(local_kms.url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_certificate_does_not_verify_for_other_names(local_kms: LocalKMS) -> None:
    context = ssl.create_default_context(cafile=str(local_kms.ca_path))
    port = int(local_kms.url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="kms.eu-west-1.amazonaws.com")


def test_stop_closes_idle_keep_alive_connections(tmp_path: Any, pki: Any) -> None:
    kms = LocalKMS(tmp_path, [ADMIN], pki.root_certificate_pem)
    kms.start()
    conn = rawhttp.connect(kms.url, kms.ca_path)
    body = b'{"NumberOfBytes": 4}'
    assert (
        rawhttp.post(
            conn, rawhttp.signed_headers(kms.url, ADMIN, "TrentService.GenerateRandom", body), body
        )[0]
        == 200
    )
    kms.stop()
    assert conn.sock is not None
    assert conn.sock.recv(1) == b""
    conn.close()


def test_stop_lets_a_request_in_flight_finish(tmp_path: Any, pki: Any, make_document: Any) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_encoder(plaintext: bytes, spki: bytes) -> bytes:
        entered.set()
        assert release.wait(30)
        return b"cms"

    kms = LocalKMS(tmp_path, [ADMIN], pki.root_certificate_pem, encrypt_for_recipient=slow_encoder)
    kms.start()
    client = client_for(kms.url, kms.ca_path, ADMIN)
    recipient = {
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "AttestationDocument": make_document(),
    }
    replies: list[Any] = []
    caller = threading.Thread(
        target=lambda: replies.append(client.generate_random(NumberOfBytes=4, Recipient=recipient))
    )
    caller.start()
    assert entered.wait(30)
    server = kms._server
    assert server is not None
    stopper = threading.Thread(target=kms.stop)
    stopper.start()
    assert server.wait_stopping(30)
    release.set()
    caller.join(30)
    stopper.join(30)
    assert [r["CiphertextForRecipient"] for r in replies] == [b"cms"]
    assert not stopper.is_alive()
