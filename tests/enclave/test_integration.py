"""The enclave service through its production paths: simulated NSM device, in-enclave CONNECT
proxy, the parent relay, TLS verified inside the enclave, the local KMS enforcing a key policy that
pins the enclave's PCR0."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import UnixAddress
from nitrokms.proto.attestation import AttestationVerifier, Expectations
from nitrokms.proto.messages import Reply
from nitrokms.sim.nsm.pki import SimulatedPKI
from nitrokms.sim.world import World

from tests.enclave.rpc_client import Client, RawPeer, error_of, header

ACCOUNT_ROOT = "arn:aws:iam::111122223333:root"
CONTEXT = {"tenant": "acme", "purpose": "integration"}


def _policy(pcr0_hex: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "admin",
                    "Effect": "Allow",
                    "Principal": {"AWS": ACCOUNT_ROOT},
                    "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"],
                    "Resource": "*",
                },
                {
                    "Sid": "enclave",
                    "Effect": "Allow",
                    "Principal": {"AWS": ACCOUNT_ROOT},
                    "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                    "Resource": "*",
                    "Condition": {
                        "StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": pcr0_hex}
                    },
                },
            ],
        }
    )


class Setup:
    """The running world (nitrokms.sim.world) plus what the tests share: PCR0 and two keys."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.address = UnixAddress(str(world.enclave.socket_path))
        self.pcr0 = b""
        self.good_key = ""
        self.other_pcr_key = ""

    async def client(self) -> Client:
        return await Client.connect(self.address)

    def credentials(self, expiration_ms: int | None = None) -> m.SetCredentialsRequest:
        parent = self.world.parent_credentials()
        return m.SetCredentialsRequest(
            access_key_id=parent.access_key_id,
            secret_access_key=parent.secret_access_key,
            session_token=parent.session_token,
            region=self.world.region,
            expiration_ms=expiration_ms,
        )


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 120))


async def ok(client: Client, body: m.Body) -> Any:
    reply = await client.call(body)
    assert isinstance(reply, Reply), reply
    return reply.result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("enclave-stack")
    with World(workdir, enclave_args=("--log-level", "DEBUG")) as running:
        setup = Setup(running)
        run(_prepare(setup))
        yield setup


async def _prepare(world: Setup) -> None:
    client = await world.client()
    described = await ok(client, m.DescribeRequest())
    world.pcr0 = described.pcrs[0]
    admin: Any = world.world.kms_admin()
    world.good_key = admin.create_key(Policy=_policy(world.pcr0.hex()))["KeyMetadata"]["Arn"]
    world.other_pcr_key = admin.create_key(Policy=_policy("ab" * 48))["KeyMetadata"]["Arn"]
    await ok(client, world.credentials())
    client.close()


def test_the_policy_really_requires_attestation(world: Setup):
    admin: Any = world.world.kms_admin()
    with pytest.raises(Exception, match="AccessDenied"):
        admin.generate_data_key(KeyId=world.good_key, KeySpec="AES_256")


def test_describe_reports_the_simulated_enclave(world: Setup):
    async def scenario() -> None:
        client = await world.client()
        described = await ok(client, m.DescribeRequest())
        assert sorted(described.pcrs) == list(range(16))
        assert len(described.pcrs[0]) == 48
        assert not described.debug_mode
        assert described.digest == "SHA384"
        assert described.module_id.startswith("i-")
        client.close()

    run(scenario())


def test_generate_seal_unseal_forget_and_reload(world: Setup):
    async def scenario() -> None:
        client = await world.client()
        made = await ok(
            client,
            m.GenerateDataKeyRequest(
                key_id=world.good_key, key_spec="AES_256", encryption_context=CONTEXT
            ),
        )
        assert made.handle.startswith("kh-")
        assert made.key_id == world.good_key
        assert len(made.ciphertext_blob) > 32
        sealed = await ok(client, m.SealRequest(plaintext=b"the payload", handle=made.handle))
        opened = await ok(
            client, m.UnsealRequest(envelope=sealed.envelope, encryption_context=CONTEXT)
        )
        assert opened.plaintext == b"the payload"
        before = (await ok(client, m.HealthRequest())).handles
        await ok(client, m.ForgetKeyRequest(handle=made.handle))
        assert (await ok(client, m.HealthRequest())).handles == before - 1
        forgotten = error_of(await client.call(m.SealRequest(plaintext=b"x", handle=made.handle)))
        assert forgotten.code == "enclave.UnknownHandle"
        reopened = await ok(
            client, m.UnsealRequest(envelope=sealed.envelope, encryption_context=CONTEXT)
        )
        assert reopened.plaintext == b"the payload"
        assert (await ok(client, m.HealthRequest())).handles == before, "reloaded via Decrypt"
        wrong = error_of(await client.call(m.UnsealRequest(envelope=sealed.envelope)))
        assert wrong.code == "crypto.DecryptionFailed"
        client.close()

    run(scenario())


def test_seal_with_key_id_and_load_data_key(world: Setup):
    async def scenario() -> None:
        client = await world.client()
        sealed = await ok(client, m.SealRequest(plaintext=b"p" * 1000, key_id=world.good_key))
        assert sealed.key_id == world.good_key
        assert sealed.handle
        made = await ok(client, m.GenerateDataKeyRequest(key_id=world.good_key, number_of_bytes=32))
        loaded = await ok(client, m.LoadDataKeyRequest(ciphertext_blob=made.ciphertext_blob))
        assert loaded.key_id == world.good_key
        assert loaded.handle != made.handle
        client.close()

    run(scenario())


def test_kms_denial_is_mapped(world: Setup):
    async def scenario() -> None:
        client = await world.client()
        denied = error_of(
            await client.call(
                m.GenerateDataKeyRequest(key_id=world.other_pcr_key, key_spec="AES_256")
            )
        )
        assert denied.code == "kms.AccessDeniedException"
        missing = error_of(
            await client.call(m.GenerateDataKeyRequest(key_id="alias/none", key_spec="AES_256"))
        )
        assert missing.code == "kms.NotFoundException"
        health = await ok(client, m.HealthRequest())
        assert health.kms_reachable is True
        client.close()

    run(scenario())


def test_attest_document_verifies_against_the_simulator_root(world: Setup):
    async def scenario() -> bytes:
        client = await world.client()
        result = await ok(client, m.AttestRequest(nonce=b"n" * 32, user_data=b"hello"))
        client.close()
        document: bytes = result.document
        return document

    document = run(scenario())
    root = SimulatedPKI.load_or_create(world.world.nsm_state).root_certificate_pem
    doc = AttestationVerifier(root).verify(
        document, expect=Expectations(pcrs={0: world.pcr0}, nonce=b"n" * 32)
    )
    assert doc.user_data == b"hello"
    assert doc.public_key is None


def test_sixteen_concurrent_requests(world: Setup):
    async def scenario() -> None:
        clients = [await world.client() for _ in range(4)]
        bodies = [
            m.GenerateDataKeyRequest(key_id=world.good_key, key_spec="AES_256") for _ in range(16)
        ]
        ids = [await clients[0].send(b) for b in bodies]
        replies = [await clients[0].receive() for _ in ids]
        assert sorted(r.id or 0 for r in replies) == ids
        handles = {r.result.handle for r in replies if isinstance(r, Reply)}  # type: ignore[attr-defined]
        assert len(handles) == 16
        seals = await asyncio.gather(
            *(
                clients[i % 4].call(m.SealRequest(plaintext=b"%d" % i, key_id=world.good_key))
                for i in range(16)
            )
        )
        assert all(isinstance(s, Reply) for s in seals)
        for c in clients:
            c.close()

    run(scenario())


def test_a_junk_frame_closes_only_that_connection(world: Setup):
    async def scenario() -> None:
        good = await world.client()
        bad = await RawPeer.connect(world.address)
        await bad.send_raw(header(3) + b"\xff\xff\xff")
        assert error_of(await bad.next_response()).code.startswith("protocol.")
        assert await bad.next_response() is None
        assert (await ok(good, m.HealthRequest())).ready
        good.close()
        bad.close()

    run(scenario())


def test_credential_expiry(world: Setup):
    async def scenario() -> None:
        client = await world.client()
        now_ms = int(time.time() * 1000)
        stale = error_of(await client.call(world.credentials(expiration_ms=now_ms - 1000)))
        assert stale.code == "enclave.CredentialsExpired"
        expires_ms = now_ms + 1500
        await ok(client, world.credentials(expiration_ms=expires_ms))
        await ok(client, m.GenerateDataKeyRequest(key_id=world.good_key, key_spec="AES_256"))
        health = await ok(client, m.HealthRequest())
        assert health.credentials_expiration_ms == expires_ms
        await asyncio.sleep(max(0.0, expires_ms / 1000 - time.time()) + 0.05)  # let it lapse
        expired = error_of(
            await client.call(m.GenerateDataKeyRequest(key_id=world.good_key, key_spec="AES_256"))
        )
        assert expired.code == "enclave.CredentialsExpired"
        assert not (await ok(client, m.HealthRequest())).ready
        await ok(client, world.credentials())
        assert (await ok(client, m.HealthRequest())).ready
        client.close()

    run(scenario())


def test_sigterm_exits_cleanly_and_keeps_secrets_out_of_logs(world: Setup):
    enclave = world.world.spawn_enclave(
        "sigterm", push_credentials=False, extra_args=("--log-level", "DEBUG")
    )
    credentials = world.credentials()
    try:

        async def scenario() -> None:
            client = await Client.connect(UnixAddress(str(enclave.socket_path)))
            await ok(client, credentials)
            sealed = await ok(
                client, m.SealRequest(plaintext=b"top-secret-text", key_id=world.good_key)
            )
            opened = await ok(client, m.UnsealRequest(envelope=sealed.envelope))
            assert opened.plaintext == b"top-secret-text"
            client.close()

        run(scenario())
    finally:
        code = enclave.stop()
    output = "\n".join(enclave.process.lines())
    assert code == 0
    assert '"stopped"' in output
    assert credentials.secret_access_key not in output
    assert "top-secret-text" not in output


def test_through_the_parent_rpc_client(world: Setup):
    from nitrokms.parent.rpc import AccessDeniedError, EnclaveClient

    with EnclaveClient(world.address) as client:
        made = client.generate_data_key(
            world.good_key, key_spec="AES_256", encryption_context=CONTEXT
        )
        envelope = client.seal(b"via the parent API", handle=made.handle).envelope
        client.forget_key(made.handle)
        assert client.unseal(envelope, encryption_context=CONTEXT) == b"via the parent API"
        with pytest.raises(AccessDeniedError):
            client.generate_data_key(world.other_pcr_key, key_spec="AES_256")
        assert client.health().ready
