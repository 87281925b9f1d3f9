"""Session-level attested hooks: every KMS client made from the session is attested, including
clients a library creates for itself; the network path's proxies reach those clients too."""

from __future__ import annotations

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from nitrokms.enclave.attested_kms import attest_session, attested_session
from nitrokms.enclave.errors import NetworkError
from nitrokms.enclave.network import KMSNetworkPath
from nitrokms.proto.addresses import UnixAddress

from .conftest import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, client_kwargs
from .relay import pipe_relay


def _credentials(session: botocore.session.Session) -> botocore.session.Session:
    session.set_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    return session


def test_every_kms_client_of_an_attested_botocore_session_is_attested(
    local_kms, nsm, pool, attested_key_id, plain_client
):
    session = _credentials(attested_session(attestor=nsm.get_attestation_doc, pool=pool))
    kwargs = {k: v for k, v in client_kwargs(local_kms).items() if not k.startswith("aws_")}
    first = session.create_client("kms", **kwargs)
    second = session.create_client("kms", **kwargs, config=Config(user_agent_extra="lib/1.0"))
    made = first.generate_data_key(KeyId=attested_key_id, NumberOfBytes=32)
    assert second.decrypt(CiphertextBlob=made["CiphertextBlob"])["Plaintext"] == made["Plaintext"]
    with pytest.raises(ClientError) as denied:  # the same call without the session's hooks
        plain_client.decrypt(CiphertextBlob=made["CiphertextBlob"])
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"


def test_boto3_session_and_clients_made_before_are_left_alone(
    local_kms, nsm, pool, attested_key_id
):
    session = boto3.session.Session()
    before = session.client("kms", **client_kwargs(local_kms))
    assert attest_session(session, attestor=nsm.get_attestation_doc, pool=pool) is session
    attest_session(session, attestor=nsm.get_attestation_doc, pool=pool)  # twice: a no-op
    after = session.client("kms", **client_kwargs(local_kms))
    assert len(after.generate_data_key(KeyId=attested_key_id, KeySpec="AES_256")["Plaintext"]) == 32
    with pytest.raises(ClientError):
        before.generate_data_key(KeyId=attested_key_id, KeySpec="AES_256")


def test_network_path_routes_the_session_through_the_connect_listener(
    tmp_path, local_kms, nsm, pool, attested_key_id
):
    relay = tmp_path / "relay.sock"
    endpoint = f"https://kms.{REGION}.amazonaws.com:{local_kms.url.rsplit(':', 1)[1]}"
    with (
        pipe_relay(str(relay), local_kms.url),
        KMSNetworkPath(REGION, endpoint_url=endpoint, relay=f"unix://{relay}") as path,
    ):
        session = _credentials(
            attested_session(attestor=nsm.get_attestation_doc, pool=pool, network=path)
        )
        client = session.create_client(
            "kms", region_name=REGION, endpoint_url=endpoint, verify=str(local_kms.ca_path),
            config=Config(user_agent_extra="lib/1.0"),
        )  # fmt: skip
        assert client.meta.config.proxies == {"https": path.proxy_url}
        made = client.generate_data_key(KeyId=attested_key_id, KeySpec="AES_256")
        assert len(made["Plaintext"]) == 32
        assert path.client_kwargs()["endpoint_url"] == endpoint


def test_network_path_needs_a_region_and_a_usable_relay(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(NetworkError, match="no AWS region"):
        KMSNetworkPath()
    with pytest.raises(NetworkError, match="bad KMS relay address"):
        KMSNetworkPath("eu-west-1", relay="ftp://nowhere")
    monkeypatch.setenv("NITROKMS_KMS_RELAY", "unix:///run/relay.sock")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "cn-north-1")
    path = KMSNetworkPath()
    assert path.relay == UnixAddress("/run/relay.sock")
    assert (path.kms_host, path.kms_port) == ("kms.cn-north-1.amazonaws.com.cn", 443)
    with pytest.raises(NetworkError, match="not started"):
        _ = path.proxy_url
