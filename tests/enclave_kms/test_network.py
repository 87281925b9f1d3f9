"""The in-enclave CONNECT listener: a real boto3 call through listener -> relay -> local KMS."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.enclave.errors import KMSTLSError, KMSUnavailableError, NetworkError
from nitrokms.enclave.kms import EnclaveKMS
from nitrokms.enclave.network import (
    ConnectProxy,
    ThreadedConnectProxy,
    decide_connect,
    kms_endpoint,
)
from nitrokms.proto.addresses import UnixAddress
from nitrokms.proto.keys import KeyRequest
from nitrokms.sim.kms.auth import Credential
from nitrokms.sim.kms.server import LocalKMS

from .conftest import ACCESS_KEY_ID, KMS_HOST, PRINCIPAL, REGION, SECRET_ACCESS_KEY
from .relay import pipe_relay


@pytest.fixture
def relay_path(tmp_path):
    return str(tmp_path / "relay.sock")


@pytest.fixture
def listener(relay_path):
    proxy = ThreadedConnectProxy(ConnectProxy(KMS_HOST, relay=UnixAddress(relay_path)))
    with proxy:
        yield proxy


def enclave_side(listener, ca_path, nsm, pool, region=REGION, **kwargs):
    kms = EnclaveKMS(
        region,
        endpoint_url=f"https://kms.{region}.amazonaws.com",
        ca_bundle=str(ca_path),
        proxy_url=listener.proxy_url,
        attestor=nsm.get_attestation_doc,
        pool=pool,
        **kwargs,
    )
    kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    return kms


def test_attested_call_through_listener_and_relay(  # noqa: PLR0917
    listener, relay_path, local_kms, nsm, pool, attested_key_id
):
    with pipe_relay(relay_path, local_kms.url) as relay:
        kms = enclave_side(listener, local_kms.ca_path, nsm, pool)
        made = kms.generate_data_key(KeyRequest(attested_key_id))
        again = kms.decrypt(made.ciphertext_blob)
        assert again.plaintext == made.plaintext
        assert len(kms.generate_random(32)) == 32
    assert relay.connections == 1, "one kept-alive tunnel carried every call"


def test_mitm_with_another_certificate_is_detected(  # noqa: PLR0917
    listener, relay_path, local_kms, nsm, pool, tmp_path
):
    impostor = LocalKMS(
        tmp_path / "impostor", [Credential(ACCESS_KEY_ID, SECRET_ACCESS_KEY, PRINCIPAL)], None
    )
    with impostor, pipe_relay(relay_path, impostor.url):
        kms = enclave_side(listener, local_kms.ca_path, nsm, pool, max_attempts=1)
        with pytest.raises(KMSTLSError) as info:
            kms.generate_random(8)
    assert info.value.code == "kms.TLSVerificationFailed"
    assert "unable to get local issuer certificate" in info.value.message
    assert kms.kms_reachable is False


def test_certificate_for_another_host_is_detected(listener, relay_path, local_kms, nsm, pool):
    with pipe_relay(relay_path, local_kms.url):
        other = ThreadedConnectProxy(
            ConnectProxy("kms.eu-west-1.amazonaws.com", relay=UnixAddress(relay_path))
        )
        with other:
            kms = enclave_side(
                other, local_kms.ca_path, nsm, pool, region="eu-west-1", max_attempts=1
            )
            with pytest.raises(KMSTLSError) as info:
                kms.generate_random(8)
    assert "hostname 'kms.eu-west-1.amazonaws.com' doesn't match" in info.value.message


def test_relay_down_is_unreachable(listener, local_kms, nsm, pool):
    kms = enclave_side(listener, local_kms.ca_path, nsm, pool, max_attempts=1)
    with pytest.raises(KMSUnavailableError) as info:
        kms.generate_random(8)
    assert info.value.code == "kms.Unreachable"


# --- the service's own route: TLS over a stream it opens to the relay (no listener) ---------------


def relay_side(relay_path, ca_path, nsm, pool, region=REGION, **kwargs):
    kms = EnclaveKMS(
        region,
        endpoint_url=f"https://kms.{region}.amazonaws.com",
        ca_bundle=str(ca_path),
        relay=UnixAddress(relay_path),
        attestor=nsm.get_attestation_doc,
        pool=pool,
        **kwargs,
    )
    kms.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    return kms


def test_attested_calls_straight_through_the_relay(
    relay_path, local_kms, nsm, pool, attested_key_id
):
    with pipe_relay(relay_path, local_kms.url) as relay:
        kms = relay_side(relay_path, local_kms.ca_path, nsm, pool)
        made = kms.generate_data_key(KeyRequest(attested_key_id))
        assert kms.decrypt(made.ciphertext_blob).plaintext == made.plaintext
        assert len(kms.generate_random(32)) == 32
    assert relay.connections == 1, "one kept-alive stream carried every call"
    stats = kms.transport_stats()
    assert (stats.handshakes, stats.requests) == (1, 3)


def test_through_the_relay_a_man_in_the_middle_is_detected(
    relay_path, local_kms, nsm, pool, tmp_path
):
    impostor = LocalKMS(
        tmp_path / "impostor", [Credential(ACCESS_KEY_ID, SECRET_ACCESS_KEY, PRINCIPAL)], None
    )
    with impostor, pipe_relay(relay_path, impostor.url):
        kms = relay_side(relay_path, local_kms.ca_path, nsm, pool)
        with pytest.raises(KMSTLSError) as info:
            kms.generate_random(8)
    assert "unable to get local issuer certificate" in info.value.message
    assert kms.kms_reachable is False


def test_through_the_relay_another_host_name_is_detected(relay_path, local_kms, nsm, pool):
    with pipe_relay(relay_path, local_kms.url):
        kms = relay_side(relay_path, local_kms.ca_path, nsm, pool, region="eu-west-1")
        with pytest.raises(KMSTLSError) as info:
            kms.generate_random(8)
    assert "hostname 'kms.eu-west-1.amazonaws.com' doesn't match" in info.value.message


def test_relay_absent_is_unreachable(relay_path, local_kms, nsm, pool):
    kms = relay_side(relay_path, local_kms.ca_path, nsm, pool, max_attempts=2)
    kms.sleep = lambda _s: None
    with pytest.raises(KMSUnavailableError) as info:
        kms.generate_random(8)
    assert info.value.code == "kms.Unreachable"
    assert "relay.sock" in info.value.message


# --- the listener (application code's boto3) -----------------------------------------------------


def test_boto3_reuses_one_tunnel_through_the_listener(  # noqa: PLR0917
    listener, relay_path, local_kms, nsm, pool, attested_key_id
):
    """Application code's path: boto3 with the attested hooks through the listener. botocore's
    pool keeps the tunnelled connection: ten calls, one relay stream, so one TLS handshake."""
    from botocore.config import Config
    from nitrokms.enclave.attested_kms import attested_kms_client

    from .conftest import client_kwargs

    kwargs = client_kwargs(local_kms) | {"endpoint_url": f"https://{KMS_HOST}"}
    config = Config(proxies={"https": listener.proxy_url}, retries={"total_max_attempts": 1})
    with pipe_relay(relay_path, local_kms.url) as relay:
        client = attested_kms_client(
            attestor=nsm.get_attestation_doc, pool=pool, config=config, **kwargs
        )
        for _ in range(10):
            assert len(client.generate_data_key(KeyId=attested_key_id, KeySpec="AES_256")
                       ["Plaintext"]) == 32  # fmt: skip
        client.close()
    assert relay.connections == 1


def raw_request(listener, data: bytes, *, half_close: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"CONNECT evil.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", b"403"),
        (f"CONNECT {KMS_HOST}:80 HTTP/1.1\r\n\r\n".encode(), b"403"),
        (b"GET http://kms.us-east-1.amazonaws.com/ HTTP/1.1\r\n\r\n", b"405"),
        (b"\x16\x03\x01 not http\r\n\r\n", b"400"),
    ],
)
def test_listener_refuses_anything_but_connect_to_kms(listener, request_bytes, status):
    assert raw_request(listener, request_bytes).startswith(b"HTTP/1.1 " + status)


def test_listener_answers_bad_gateway_when_relay_is_down(listener):
    reply = raw_request(listener, f"CONNECT {KMS_HOST}:443 HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 502")


def test_truncated_or_oversized_head_is_refused(listener):
    assert raw_request(listener, b"CONNECT kms", half_close=True).startswith(b"HTTP/1.1 400")
    huge = b"CONNECT " + KMS_HOST.encode() + b":443 HTTP/1.1\r\nX: " + b"a" * 70000
    assert raw_request(listener, huge, half_close=True).startswith(b"HTTP/1.1 400")


def test_listener_pipes_with_half_close(listener, relay_path, tmp_path):
    import asyncio
    import threading

    from nitrokms.transport.sockets import start_server

    got = []
    ready, stop = threading.Event(), threading.Event()

    async def echo_upper(reader, writer):
        data = await reader.read()
        got.append(data)
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await start_server(echo_upper, UnixAddress(relay_path))
        ready.set()
        async with server:
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    try:
        assert ready.wait(10)
        head = f"CONNECT {KMS_HOST}:443 HTTP/1.1\r\n\r\n".encode()
        reply = raw_request(listener, head + b"hello tunnel", half_close=True)
    finally:
        stop.set()
        thread.join(10)
    assert reply == b"HTTP/1.1 200 Connection established\r\n\r\nHELLO TUNNEL"
    assert got == [b"hello tunnel"]


def test_port_in_use_is_a_network_error(listener):
    clash = ThreadedConnectProxy(ConnectProxy(KMS_HOST, port=listener.port))
    with pytest.raises(NetworkError) as info:
        clash.start()
    assert info.value.code == "enclave.NetworkSetupFailed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decide_connect_judges_any_bytes(head):
    decision = decide_connect(head, KMS_HOST)
    assert decision.status in (200, 400, 403, 405)


@given(st.sampled_from([KMS_HOST, KMS_HOST.upper(), KMS_HOST + "."]))
def test_decide_connect_accepts_the_kms_host_in_any_case(host):
    head = f"CONNECT {host}:443 HTTP/1.1\r\n\r\n".encode()
    assert decide_connect(head, KMS_HOST).status == 200


@pytest.mark.parametrize(
    ("region", "url", "expected"),
    [
        ("us-east-1", None, ("kms.us-east-1.amazonaws.com", 443)),
        ("cn-north-1", None, ("kms.cn-north-1.amazonaws.com.cn", 443)),
        ("eu-west-1", "https://kms.eu-west-1.amazonaws.com", ("kms.eu-west-1.amazonaws.com", 443)),
        ("us-east-1", "https://vpce.example:8443/", ("vpce.example", 8443)),
    ],
)
def test_kms_endpoint(region, url, expected):
    assert kms_endpoint(region, url) == expected


@pytest.mark.parametrize("url", ["http://kms.example", "https://", "https://h:99999"])
def test_kms_endpoint_refuses_bad_urls(url):
    with pytest.raises(NetworkError):
        kms_endpoint("us-east-1", url)
