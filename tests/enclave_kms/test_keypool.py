"""The recipient key pool: ready keys, rotation by age and uses, grace, no key material in reprs."""

from __future__ import annotations

import hashlib
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from nitrokms.enclave.errors import KeyPoolError
from nitrokms.enclave.keypool import RecipientKeyPool

WAIT_S = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_pool(clock: FakeClock, **kwargs) -> RecipientKeyPool:
    pool = RecipientKeyPool(clock=clock, **kwargs)
    assert pool.wait_ready(WAIT_S)
    return pool


def test_keys_are_rsa_2048_with_sha256_ski(clock):
    with make_pool(clock, size=1) as pool:
        key = pool.acquire()
    public = key.private_key.public_key()
    assert public.key_size == 2048
    assert public.public_numbers().e == 65537
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.spki_der == spki
    assert key.ski == hashlib.sha256(spki).digest()


def test_repr_hides_key_material(clock):
    with make_pool(clock, size=1) as pool:
        key = pool.acquire()
        text = repr(key) + repr(pool) + repr(pool.stats())
    private_pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert "PRIVATE" not in text
    assert private_pem.decode() not in text
    assert key.spki_der.hex() not in text
    assert str(key.private_key.private_numbers().d) not in text


def test_warm_pool_never_blocks(clock):
    with make_pool(clock, size=2, max_uses=1000) as pool:
        for _ in range(200):
            pool.acquire(timeout_s=0)
        stats = pool.stats()
    assert stats.blocked_acquires == 0
    assert stats.acquired == 200


def test_rotation_by_use_count(clock):
    with make_pool(clock, size=1, max_uses=3) as pool:
        first = [pool.acquire() for _ in range(3)]
        assert len({k.ski for k in first}) == 1
        fourth = pool.acquire(timeout_s=WAIT_S)
        assert fourth.ski != first[0].ski
        assert pool.lookup(first[0].ski) is first[0], "retired key still in grace"
        assert first[0].ski in pool.keys_by_ski()


def test_rotation_by_age_renews_before_expiry_without_blocking(clock):
    with make_pool(clock, size=2, max_age_s=100.0, grace_s=10.0) as pool:
        old = {pool.acquire().ski for _ in range(4)}
        clock.now += 85.0  # past the renew point (80 %), before hard expiry
        assert pool.acquire(timeout_s=0).ski in old, "stale keys still serve while renewing"
        assert pool.wait_ready(WAIT_S)
        renewed = pool.acquire(timeout_s=0)
        assert renewed.ski not in old
        assert pool.stats().blocked_acquires == 0
        for ski in old:
            assert pool.lookup(ski) is not None, "stale keys retired into grace"
        clock.now += 11.0
        for ski in old:
            assert pool.lookup(ski) is None, "grace over: key forgotten"


def test_hard_expiry_never_serves_an_expired_key(clock):
    with make_pool(clock, size=1, max_age_s=100.0) as pool:
        old = pool.acquire()
        clock.now += 101.0
        fresh = pool.acquire(timeout_s=WAIT_S)
    assert fresh.ski != old.ski


def test_closed_pool_refuses(clock):
    pool = make_pool(clock, size=1)
    pool.close()
    with pytest.raises(KeyPoolError) as info:
        pool.acquire(timeout_s=1)
    assert info.value.code == "enclave.KeyPoolUnavailable"
    assert pool.keys_by_ski() == {}


def test_acquire_times_out_when_nothing_is_ready(clock):
    release = threading.Event()

    def slow_keygen(bits: int) -> rsa.RSAPrivateKey:
        release.wait(WAIT_S)
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)

    pool = RecipientKeyPool(size=1, clock=clock, keygen=slow_keygen)
    try:
        with pytest.raises(KeyPoolError, match="timed out"):
            pool.acquire(timeout_s=0.05)
        release.set()
        assert pool.acquire(timeout_s=WAIT_S) is not None
        assert pool.stats().blocked_acquires == 2
    finally:
        release.set()
        pool.close()


def test_keygen_failure_reaches_waiters(clock):
    def broken(bits: int) -> rsa.RSAPrivateKey:
        raise RuntimeError("no entropy")

    pool = RecipientKeyPool(size=1, clock=clock, keygen=broken)
    try:
        with pytest.raises(KeyPoolError, match="no entropy"):
            pool.acquire(timeout_s=WAIT_S)
        assert pool.stats().last_error == "RuntimeError: no entropy"
    finally:
        pool.close()


def test_concurrent_acquire_counts_every_use(clock):
    with make_pool(clock, size=2, max_uses=50) as pool:
        got: list[bytes] = []
        lock = threading.Lock()

        def worker() -> None:
            for _ in range(40):
                ski = pool.acquire(timeout_s=WAIT_S).ski
                with lock:
                    got.append(ski)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = pool.stats()
    assert len(got) == 320
    assert stats.acquired == 320
    assert max(got.count(s) for s in set(got)) <= 50


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 0}, {"max_age_s": 0}, {"max_uses": 0}, {"key_bits": 1024}, {"renew_fraction": 0}],
)
def test_bad_configuration_is_refused(kwargs):
    with pytest.raises(ValueError, match="must"):
        RecipientKeyPool(start=False, **kwargs)


# --- pre-attested keys ------------------------------------------------------------------------


class CountingAttestor:
    """A stand-in NSM: a "document" naming the key and a serial number; optionally failing."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False
        self.lock = threading.Lock()
        self.called = threading.Condition(self.lock)

    def __call__(self, *, public_key: bytes) -> bytes:
        with self.lock:
            self.calls += 1
            self.called.notify_all()
            if self.failing:
                raise RuntimeError("NSM unavailable")
            return b"doc-%d:" % self.calls + public_key

    def wait_calls(self, count: int) -> bool:
        with self.lock:
            return self.called.wait_for(lambda: self.calls >= count, WAIT_S)


def test_pre_attested_keys_need_no_attestation_on_the_request_path(clock):
    attestor = CountingAttestor()
    with make_pool(clock, size=2, attestor=attestor) as pool:
        made_ahead = attestor.calls
        handed = [pool.acquire_attested(timeout_s=0) for _ in range(50)]
        stats = pool.stats()
    assert made_ahead == 2, "one document per ready key, made before any request"
    assert attestor.calls == 2, "no NSM round trip per call"
    for attested in handed:
        assert attested.document.endswith(attested.key.spki_der)
    assert stats.attested == 2
    assert stats.inline_documents == 0
    assert "doc-" not in repr(handed[0])


def test_documents_are_renewed_before_their_age_limit(clock):
    attestor = CountingAttestor()
    with make_pool(clock, size=1, attestor=attestor, document_max_age_s=10.0) as pool:
        first = pool.acquire_attested(timeout_s=0).document
        clock.now += 8.5  # past the renew point (80 %), before the limit
        assert pool.acquire_attested(timeout_s=0).document == first, "still valid: served"
        assert attestor.wait_calls(2), "renewed in the background"
        assert pool.wait_ready(WAIT_S)
        renewed = pool.acquire_attested(timeout_s=0).document
        assert renewed != first
        assert pool.stats().inline_documents == 0


def test_a_document_past_its_age_limit_is_never_handed_out(clock):
    attestor = CountingAttestor()
    with make_pool(clock, size=1, attestor=attestor, document_max_age_s=10.0) as pool:
        first = pool.acquire_attested(timeout_s=0).document
        clock.now += 10.0
        second = pool.acquire_attested(timeout_s=0).document
        assert second != first
        assert pool.stats().inline_documents + pool.stats().documents_made >= 2


def test_age_zero_turns_reuse_off(clock):
    attestor = CountingAttestor()
    with make_pool(clock, size=1, attestor=attestor, document_max_age_s=0) as pool:
        documents = {pool.acquire_attested(timeout_s=0).document for _ in range(5)}
        stats = pool.stats()
    assert len(documents) == 5, "a fresh document for every call"
    assert attestor.calls == 5, "none made ahead of time"
    assert stats.inline_documents == 5
    assert not pool.pre_attested


def test_attest_hands_boto3_hooks_the_pre_made_document(clock):
    attestor = CountingAttestor()
    with make_pool(clock, size=1, attestor=attestor) as pool:
        key = pool.acquire()
        assert pool.attest(public_key=key.spki_der) == pool.attest(public_key=key.spki_der)
        assert attestor.calls == 1
        assert pool.attest(public_key=b"someone else") == b"doc-2:someone else"


def test_documents_stop_a_minute_before_their_leaf_certificate_expires(clock, nsm):
    from cryptography import x509
    from nitrokms.proto.attestation import parse_document

    probe = nsm.get_attestation_doc(public_key=b"x")
    leaf = x509.load_der_x509_certificate(parse_document(probe).certificate)
    expires = leaf.not_valid_after_utc.timestamp()

    def attestor(*, public_key: bytes) -> bytes:
        document: bytes = nsm.get_attestation_doc(public_key=public_key)
        return document

    pool = RecipientKeyPool(
        size=1, clock=clock, attestor=attestor, document_max_age_s=600.0,
        wall_clock=lambda: expires - 90.0,  # 90 s of leaf validity left: 30 s usable
    )  # fmt: skip
    with pool:
        assert pool.wait_ready(WAIT_S)
        first = pool.acquire_attested(timeout_s=0).document
        clock.now += 29.0
        assert pool.acquire_attested(timeout_s=0).document == first
        clock.now += 2.0
        assert pool.acquire_attested(timeout_s=0).document != first


def test_attestation_failures_surface_inline_and_the_pool_recovers(clock):
    attestor = CountingAttestor()
    attestor.failing = True
    pool = RecipientKeyPool(size=1, clock=clock, attestor=attestor)
    try:
        assert attestor.wait_calls(1)
        with pytest.raises(RuntimeError, match="NSM unavailable"):
            pool.acquire_attested(timeout_s=WAIT_S)
        assert "attestation failed" in str(pool.stats().last_error)
        attestor.failing = False
        clock.now += 2.0  # past the background retry delay
        got = pool.acquire_attested(timeout_s=WAIT_S)
        assert got.document.endswith(got.key.spki_der)
        assert pool.wait_ready(WAIT_S)
    finally:
        pool.close()


def test_acquire_attested_needs_an_attestor(clock):
    with make_pool(clock, size=1) as pool, pytest.raises(KeyPoolError, match="no attestor"):
        pool.acquire_attested(timeout_s=0)
