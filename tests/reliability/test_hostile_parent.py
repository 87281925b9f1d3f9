"""A hostile parent talking to the enclave's RPC socket directly.

What must hold: replayed requests are just requests (harmless: the parent could send them
anyway), but no replayed or modified envelope ever decrypts under another context or key; bit
flips give typed answers or valid different requests, never a crash; oversized frames and
slowloris connections cost bounded memory and time while other clients keep being served; a
ciphertext that is not the caller's, or a wrong encryption context, is refused by KMS.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from collections import Counter

import pytest
from nitrokms.parent.rpc import EnclaveClient
from nitrokms.parent.rpc.errors import RemoteError
from nitrokms.proto import messages as m
from nitrokms.sim.world import EnclaveProcess, World

from tests.reliability.hostile import (
    Outcome,
    exchange,
    flip_bits,
    raw_connection,
    read_responses,
    request_frame,
)
from tests.reliability.support import CONTEXT, gdk_call, run_load, sample_rss

INTERNAL_ERROR = "enclave.InternalError"
FLIPPED_FRAMES_PER_REQUEST = 40
IDLE_TIMEOUT_S = 2.0
SLOWLORIS_CONNECTIONS = 48


def _socket(world: World) -> str:
    return str(world.enclave.socket_path)


def _healthy(path: str) -> None:
    outcome = exchange(path, request_frame(1, m.HealthRequest()), 1)
    assert isinstance(outcome.responses[0], m.Reply), outcome


# --- replays ------------------------------------------------------------------------------------


def test_replayed_request_frames_are_answered_as_requests(
    world: World, held: m.GenerateDataKeyResult
) -> None:
    seal = request_frame(7, m.SealRequest(plaintext=b"replayed", handle=held.handle))
    with raw_connection(_socket(world)) as sock:
        sock.sendall(seal + seal)
        first = read_responses(sock, 2)
    second = exchange(_socket(world), seal, 1)
    envelopes = [
        r.result.envelope
        for r in first.responses + second.responses
        if isinstance(r, m.Reply) and isinstance(r.result, m.SealResult)
    ]
    assert len(first.responses) == 2
    assert len(envelopes) >= 2, first.codes() + second.codes()
    assert len(set(envelopes)) == len(envelopes), "a replayed Seal reused a nonce"
    with world.client() as client:
        for envelope in envelopes:
            assert client.unseal(envelope, encryption_context=CONTEXT) == b"replayed"


# --- envelopes and ciphertexts that are not what they claim -----------------------------------


def test_modified_envelopes_never_decrypt(world: World, key_id: str) -> None:
    rng = random.Random(9)
    with world.client() as client:
        sealed = client.seal(b"the real plaintext", key_id=key_id, encryption_context=CONTEXT)
        other = client.seal(b"other", key_id=key_id, encryption_context={"tenant": "other"})
        envelope = sealed.envelope
        candidates = [flip_bits(envelope, rng, 1) for _ in range(60)]
        candidates += [envelope[:-1], envelope + b"\x00", other.envelope[: len(envelope) // 2]]
        codes: Counter[str] = Counter()
        for candidate in candidates:
            with pytest.raises(RemoteError) as caught:
                client.unseal(candidate, encryption_context=CONTEXT)
            codes[caught.value.code] += 1
        with pytest.raises(RemoteError) as wrong_context:
            client.unseal(envelope, encryption_context={"tenant": "other"})
        assert client.unseal(envelope, encryption_context=CONTEXT) == b"the real plaintext"
    assert INTERNAL_ERROR not in codes, codes
    assert wrong_context.value.code in ("crypto.DecryptionFailed", "enclave.ContextMismatch")


def test_old_envelope_replayed_after_its_key_was_forgotten_still_needs_kms(
    world: World, key_id: str
) -> None:
    """A replayed envelope reloads its key through attested Decrypt with its own bound context:
    it opens for the right context only, whichever key is held at the time."""
    with world.client() as client:
        sealed = client.seal(b"old", key_id=key_id, encryption_context=CONTEXT)
        assert sealed.handle is not None
        client.forget_key(sealed.handle)
        with pytest.raises(RemoteError):
            client.unseal(sealed.envelope, encryption_context={"tenant": "someone-else"})
        assert client.unseal(sealed.envelope, encryption_context=CONTEXT) == b"old"


def test_someone_elses_ciphertext_blob_or_a_wrong_context_is_refused(
    world: World, key_id: str
) -> None:
    other_key = world.create_attested_key()
    foreign = _other_enclaves_blob(world)
    with world.client() as client:
        mine = client.generate_data_key(key_id, encryption_context=CONTEXT)
        cases = {
            "wrong context": {"encryption_context": {"tenant": "other"}},
            "no context": {},
            "other key id": {"encryption_context": CONTEXT, "key_id": other_key},
        }
        codes = {}
        for name, kwargs in cases.items():
            with pytest.raises(RemoteError) as caught:
                client.load_data_key(mine.ciphertext_blob, **kwargs)  # type: ignore[arg-type]
            codes[name] = caught.value.code
        with pytest.raises(RemoteError) as forged:
            client.load_data_key(bytes(len(mine.ciphertext_blob)), encryption_context=CONTEXT)
        with pytest.raises(RemoteError) as not_ours:
            client.load_data_key(foreign)
    assert codes["wrong context"] == "kms.InvalidCiphertextException"
    assert codes["no context"] == "kms.InvalidCiphertextException"
    assert codes["other key id"] in ("kms.IncorrectKeyException", "kms.InvalidCiphertextException")
    assert forged.value.code == "kms.InvalidCiphertextException"
    assert not_ours.value.code == "kms.AccessDeniedException"


def _other_enclaves_blob(world: World) -> bytes:
    """A CiphertextBlob under a key that only an enclave with other measurements may decrypt
    (the admin may make blobs without plaintext, as an application's control plane would)."""
    policy = world.key_policy(measurements={0: "aa" * 48, 1: "bb" * 48, 2: "cc" * 48})
    policy["Statement"].append(
        {
            "Sid": "MakeBlobs",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
            "Action": "kms:GenerateDataKeyWithoutPlaintext",
            "Resource": "*",
        }
    )
    key = world.create_key(policy, "another enclave's key")
    blob: bytes = world.kms_admin().generate_data_key_without_plaintext(
        KeyId=key, KeySpec="AES_256"
    )["CiphertextBlob"]
    return blob


# --- modified frames ----------------------------------------------------------------------------


def _victim_frames(world: World, key_id: str, held: m.GenerateDataKeyResult) -> list[bytes]:
    with world.client() as client:
        throwaway = client.generate_data_key(key_id)
        sealed = client.seal(b"flip me", handle=held.handle)
    bodies: list[m.Body] = [
        m.HealthRequest(),
        m.DescribeRequest(),
        m.GenerateDataKeyRequest(key_id=key_id, key_spec="AES_256", encryption_context=CONTEXT),
        m.SealRequest(plaintext=b"secret", handle=held.handle),
        m.UnsealRequest(envelope=sealed.envelope, encryption_context=CONTEXT),
        m.LoadDataKeyRequest(ciphertext_blob=held.ciphertext_blob, encryption_context=CONTEXT),
        m.AttestRequest(nonce=b"\x01" * 32),
        m.ForgetKeyRequest(handle=throwaway.handle),
    ]
    return [request_frame(i + 1, body) for i, body in enumerate(bodies)]


def test_bit_flipped_frames_get_typed_answers_and_the_service_survives(
    world: World, key_id: str, held: m.GenerateDataKeyResult
) -> None:
    rng = random.Random(1234)
    pid = world.enclave_pid
    outcomes: Counter[str] = Counter()
    for frame in _victim_frames(world, key_id, held):
        for _ in range(FLIPPED_FRAMES_PER_REQUEST):
            flipped = flip_bits(frame, rng, rng.choice((1, 1, 2, 4)))
            outcome = exchange(_socket(world), flipped, 1)
            outcomes.update(_classify(outcome))
    assert INTERNAL_ERROR not in outcomes, outcomes
    assert "silently closed" not in outcomes, outcomes
    assert world.enclave_pid == pid
    assert world.enclave.running
    _healthy(_socket(world))
    with world.client() as client:
        sealed = client.seal(b"still works", handle=held.handle)
        assert client.unseal(sealed.envelope, encryption_context=CONTEXT) == b"still works"
    print(f"bit-flipped frames: {sum(outcomes.values())} -> {dict(outcomes)}")


def _classify(outcome: Outcome) -> list[str]:
    if not outcome.responses:
        return ["silently closed"]
    return [
        "reply" if isinstance(r, m.Reply) else f"error {r.code}"
        for r in outcome.responses
        if isinstance(r, m.Reply | m.ErrorReply)
    ]


# --- oversized frames and slowloris -------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(world: World) -> EnclaveProcess:
    """An enclave with a short idle timeout, so slowloris tests finish in seconds."""
    return world.spawn_enclave(
        "guarded",
        extra_args=("--idle-timeout-s", str(IDLE_TIMEOUT_S), "--max-connections", "64"),
    )


def test_oversized_frame_is_refused_from_its_header(world: World) -> None:
    started = time.monotonic()
    with raw_connection(_socket(world)) as sock:
        sock.sendall(struct.pack(">I", 0xFFFFFFFF) + b"\xa0" * 1024)
        outcome = read_responses(sock, 2)
    assert time.monotonic() - started < 5
    assert outcome.closed
    assert outcome.codes() == ["protocol.FrameTooLarge"]
    _healthy(_socket(world))


def test_slowloris_connections_are_dropped_and_others_keep_being_served(
    guarded: EnclaveProcess,
) -> None:
    path = str(guarded.socket_path)
    frame = request_frame(1, m.HealthRequest())
    dropped_after: list[float] = []
    stop = threading.Event()

    def dribble() -> None:
        with raw_connection(path, timeout_s=IDLE_TIMEOUT_S * 5) as sock:
            started = time.monotonic()
            try:
                for byte in frame:
                    sock.sendall(bytes([byte]))
                    readable = _wait_readable(sock, 1.0)  # one byte a second, as slowloris does
                    if readable or stop.is_set():
                        break
                read_responses(sock, 1)
            except OSError:
                pass
            dropped_after.append(time.monotonic() - started)

    with sample_rss({"enclave": guarded.pid}) as rss:
        attackers = [threading.Thread(target=dribble) for _ in range(SLOWLORIS_CONNECTIONS)]
        for attacker in attackers:
            attacker.start()
        latencies = []
        with EnclaveClient(guarded.address, timeout_s=10.0) as client:
            for _ in range(20):
                begun = time.monotonic()
                assert client.health().ready in (True, False)
                latencies.append(time.monotonic() - begun)
        for attacker in attackers:
            attacker.join(IDLE_TIMEOUT_S * 10)
        stop.set()
    assert len(dropped_after) == SLOWLORIS_CONNECTIONS
    assert max(dropped_after) < IDLE_TIMEOUT_S + 3, sorted(dropped_after)[-5:]
    assert max(latencies) < 2.0, max(latencies)
    assert rss["enclave"].peak - rss["enclave"].start < 64 * 1024, str(rss["enclave"])
    print(
        f"slowloris: {SLOWLORIS_CONNECTIONS} connections dropped after "
        f"{min(dropped_after):.1f}-{max(dropped_after):.1f} s; "
        f"health p100 {max(latencies) * 1000:.0f} ms; enclave RSS {rss['enclave']}"
    )


def _wait_readable(sock: socket.socket, timeout_s: float) -> bool:
    import select

    readable, _, _ = select.select([sock], [], [], timeout_s)
    return bool(readable)


def test_stalled_large_frames_cost_bounded_memory_and_are_dropped(
    guarded: EnclaveProcess,
) -> None:
    """Connections that announce a 4 MiB frame, send 1 MiB and stall: buffered, then dropped by
    the idle timeout. The worst case is max_connections x max_frame_bytes (see RELIABILITY.md)."""
    path = str(guarded.socket_path)
    connections, sent = 16, 1024 * 1024
    with sample_rss({"enclave": guarded.pid}) as rss:
        socks = []
        try:
            for _ in range(connections):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(IDLE_TIMEOUT_S * 5)
                socks.append(sock)
                sock.connect(path)
                sock.sendall(struct.pack(">I", 4 * 1024 * 1024) + b"\x00" * sent)
            started = time.monotonic()
            outcomes = [read_responses(sock, 1) for sock in socks]
            elapsed = time.monotonic() - started
        finally:
            for sock in socks:
                sock.close()
    assert all(o.closed or o.codes() == ["enclave.Timeout"] for o in outcomes), outcomes
    assert elapsed < IDLE_TIMEOUT_S + 5
    growth_kib = rss["enclave"].peak - rss["enclave"].start
    assert growth_kib < connections * sent * 3 // 1024 + 64 * 1024, str(rss["enclave"])
    print(f"stalled large frames: {connections} x 1 MiB buffered; enclave RSS {rss['enclave']}")


def test_the_service_is_ready_and_reaches_kms_after_the_hostile_traffic(world: World) -> None:
    with world.client() as client:
        health = client.health()
    assert health.ready
    assert health.kms_reachable is not False


# --- a man in the middle, repeatedly ------------------------------------------------------------


def test_a_tls_terminating_parent_gets_only_typed_refusals_under_load(
    world: World, key_id: str
) -> None:
    """tests/e2e proves one MITM handshake is refused; here 32 concurrent calls through the same
    MITM all fail typed, the MITM reads nothing, and the enclave keeps serving what needs no KMS."""
    from tests.e2e.mitm import MITMRelay, impostor_certificate

    cert, key = impostor_certificate(world.workdir, world.kms_host)
    mitm = MITMRelay(
        world.run_dir / "mitm-load.sock", cert=cert, key=key,
        upstream=("127.0.0.1", world.kms_port), upstream_host=world.kms_host,
        upstream_ca=world.kms_ca_path,
    )  # fmt: skip
    with mitm:
        enclave = world.spawn_enclave(
            "behind-mitm-load", kms_relay=mitm.socket_path, extra_args=("--kms-max-attempts", "1")
        )
        try:
            result = asyncio.run(
                run_load(enclave.address, gdk_call(key_id), total=32, concurrency=16)
            )
            with EnclaveClient(enclave.address) as client:
                assert client.health().credentials_present
        finally:
            enclave.stop()
    assert result.ok == 0
    assert dict(result.errors) == {"kms.TLSVerificationFailed": 32}, result.messages[:3]
    assert mitm.requests_seen == 0
