"""The demo matrix as tests: which enclaves get a data key from a key whose policy the generator
pinned to the world's measurements, and how the others are told no. Plus the two things a hostile
parent might try: reach KMS around the relay from inside the enclave's namespace, or terminate
the enclave's TLS itself."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from nitrokms.parent.rpc import AccessDeniedError, EnclaveClient, RemoteError
from nitrokms.sim.world import EnclaveProcess, World

from tests.e2e.conftest import open_world
from tests.e2e.mitm import MITMRelay, impostor_certificate

CONTEXT = {"suite": "e2e"}
OTHER_IMAGE = {i: hashlib.sha384(f"another image PCR{i}".encode()).digest() for i in (0, 1, 2)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from open_world(tmp_path_factory, "e2e-matrix")


@pytest.fixture(scope="module")
def pinned_key(world: World) -> str:
    return world.create_attested_key()


@pytest.fixture(scope="module")
def debug_allowed_key(world: World) -> str:
    return world.create_attested_key(allow_debug=True)


@pytest.fixture(scope="module")
def other_enclave(world: World) -> Iterator[EnclaveProcess]:
    enclave = world.spawn_enclave("other-image", measurements=OTHER_IMAGE)
    yield enclave
    enclave.stop()


@pytest.fixture(scope="module")
def debug_enclave(world: World) -> Iterator[EnclaveProcess]:
    enclave = world.spawn_enclave("debug-mode", debug=True)
    yield enclave
    enclave.stop()


def _denied(world: World, address: str, key: str) -> tuple[AccessDeniedError, str]:
    """Ask for a data key through the enclave at `address`, expecting a denial; return the error
    and the local KMS's log line explaining it."""
    kms = world.process("kms")
    mark = kms.mark()
    with EnclaveClient(address) as client, pytest.raises(AccessDeniedError) as denied:
        client.generate_data_key(key, key_spec="AES_256", encryption_context=CONTEXT)
    return denied.value, kms.wait_for_line("AccessDenied:", after=mark)


def test_the_pinned_enclave_gets_keys_that_never_leave_it(world: World, pinned_key: str):
    with world.client() as client:
        made = client.generate_data_key(pinned_key, key_spec="AES_256", encryption_context=CONTEXT)
        sealed = client.seal(b"ledger entry 42", handle=made.handle, encryption_context=CONTEXT)
        assert client.unseal(sealed.envelope, encryption_context=CONTEXT) == b"ledger entry 42"
        client.forget_key(made.handle)
        reopened = client.unseal(sealed.envelope, encryption_context=CONTEXT)
    assert made.handle.startswith("kh-")
    assert made.key_id == pinned_key
    assert reopened == b"ledger entry 42", "reloaded through attested Decrypt"
    assert b"ledger entry 42" not in sealed.envelope
    assert not hasattr(made, "plaintext")


def test_the_parent_role_alone_cannot_get_a_key(world: World, pinned_key: str):
    direct: Any = world.kms_as_parent()
    with pytest.raises(direct.exceptions.ClientError, match="AccessDeniedException"):
        direct.generate_data_key(KeyId=pinned_key, KeySpec="AES_256")


def test_an_enclave_with_other_measurements_is_denied(
    world: World, pinned_key: str, other_enclave: EnclaveProcess
):
    error, log_line = _denied(world, other_enclave.address, pinned_key)
    assert error.code == "kms.AccessDeniedException"
    assert "parent-instance-role is not authorized to perform: kms:GenerateDataKey" in str(error)
    assert "Sid 'EnclaveDataPlane'" in log_line
    assert "kms:RecipientAttestation:PCR0" in log_line
    assert OTHER_IMAGE[0].hex() in log_line
    assert world.measurements[0] in log_line


def test_a_debug_mode_enclave_is_denied(
    world: World, pinned_key: str, debug_enclave: EnclaveProcess
):
    with EnclaveClient(debug_enclave.address) as client:
        described = client.describe()
    assert described.debug_mode
    assert described.pcrs[0] == bytes(48)
    error, log_line = _denied(world, debug_enclave.address, pinned_key)
    assert error.code == "kms.AccessDeniedException"
    assert f"(request: '{'0' * 96}')" in log_line


def test_allow_debug_policy_admits_debug_mode_but_still_no_other_image(
    world: World,
    debug_allowed_key: str,
    debug_enclave: EnclaveProcess,
    other_enclave: EnclaveProcess,
):
    policy = world.kms_admin().get_key_policy(KeyId=debug_allowed_key, PolicyName="default")
    assert "EnclaveDataPlaneDebug" in policy["Policy"]
    for address in (debug_enclave.address, world.enclave_address):
        with EnclaveClient(address) as client:
            made = client.generate_data_key(debug_allowed_key, number_of_bytes=32)
        assert made.key_id == debug_allowed_key
    _, log_line = _denied(world, other_enclave.address, debug_allowed_key)
    assert "Sid 'EnclaveDataPlaneDebug'" in log_line


def test_the_enclave_reaches_kms_only_through_the_relay(world: World, pinned_key: str):
    if world.isolation_used == "none":
        pytest.skip("no network namespace can be made on this machine")
    ours = os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{world.enclave_pid}/ns/net") != ours
    with socket.create_connection(("127.0.0.1", world.kms_port), timeout=5):
        pass  # from the parent's namespace the port is open
    assert "ConnectionRefusedError" in world.probe_direct_kms()
    with world.client() as client:
        made = client.generate_data_key(pinned_key, number_of_bytes=16)
    assert made.key_id == pinned_key, "yet KMS is reachable: through the relay"


def test_a_parent_terminating_tls_itself_is_refused(world: World, pinned_key: str):
    cert, key = impostor_certificate(world.workdir, world.kms_host)
    mitm = MITMRelay(
        world.run_dir / "mitm.sock",
        cert=cert,
        key=key,
        upstream=("127.0.0.1", world.kms_port),
        upstream_host=world.kms_host,
        upstream_ca=world.kms_ca_path,
    )
    with mitm:
        enclave = world.spawn_enclave(
            "behind-mitm", kms_relay=mitm.socket_path, extra_args=("--kms-max-attempts", "1")
        )
        try:
            with EnclaveClient(enclave.address) as client, pytest.raises(RemoteError) as refused:
                client.generate_data_key(pinned_key, key_spec="AES_256")
        finally:
            enclave.stop()
    assert refused.value.code == "kms.TLSVerificationFailed"
    assert "self-signed certificate in certificate chain" in refused.value.message
    assert mitm.handshake_errors, "the enclave aborted the handshake"
    assert mitm.requests_seen == 0, "no request was readable by the parent"


def test_no_secret_reaches_any_log(world: World):
    parent = world.parent_credentials()
    secrets = [parent.secret_access_key, parent.session_token or "unset"]
    for name, path in world.logs.items():
        text = path.read_text()
        for secret in secrets:
            assert secret not in text, f"a parent secret is in the {name} log"
