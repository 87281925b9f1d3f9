from __future__ import annotations

import threading

import pytest
from nitrokms.enclave.errors import UnknownHandleError
from nitrokms.enclave.keyring import Keyring


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _add(
    ring: Keyring, fill: int = 7, blob: bytes = b"blob", context=None
) -> tuple[str, bytearray]:
    key = bytearray([fill]) * 32
    handle = ring.add(key, key_id="arn:k", ciphertext_blob=blob, encryption_context=context)
    return handle, key


def test_handles_are_opaque_and_unique():
    ring = Keyring()
    first, _ = _add(ring)
    second, _ = _add(ring)
    assert first != second
    assert first.startswith("kh-")
    assert len(first) == 3 + 32
    int(first[3:], 16)


def test_borrow_gives_the_key_and_forget_wipes_it():
    ring = Keyring()
    handle, key = _add(ring)
    with ring.borrow(handle) as held:
        assert held.key == bytearray([7]) * 32
        assert held.key_id == "arn:k"
    ring.forget(handle)
    assert key == bytearray(32)
    with pytest.raises(UnknownHandleError) as info, ring.borrow(handle):
        pass
    assert info.value.code == "enclave.UnknownHandle"
    with pytest.raises(UnknownHandleError):
        ring.forget(handle)


def test_lru_eviction_at_the_bound_wipes_the_least_recently_used():
    ring = Keyring(max_keys=2)
    first, first_key = _add(ring, 1, b"a")
    second, second_key = _add(ring, 2, b"b")
    with ring.borrow(first):
        pass  # first is now the most recently used
    third, _ = _add(ring, 3, b"c")
    assert len(ring) == 2
    assert second_key == bytearray(32)
    assert first_key == bytearray([1]) * 32
    with pytest.raises(UnknownHandleError), ring.borrow(second):
        pass
    assert ring.find(b"b", None) is None
    assert ring.find(b"c", None) == third


def test_ttl_expiry_with_an_injected_clock():
    clock = Clock()
    ring = Keyring(ttl_s=10, clock=clock)
    handle, key = _add(ring)
    clock.now += 9.9
    with ring.borrow(handle):
        pass
    clock.now += 0.2
    assert ring.sweep() == 1
    assert key == bytearray(32)
    assert len(ring) == 0
    with pytest.raises(UnknownHandleError), ring.borrow(handle):
        pass


def test_expiry_is_noticed_on_access_without_a_sweep():
    clock = Clock()
    ring = Keyring(ttl_s=5, clock=clock)
    handle, key = _add(ring)
    clock.now += 5
    with pytest.raises(UnknownHandleError), ring.borrow(handle):
        pass
    assert key == bytearray(32)


def test_a_borrowed_key_is_wiped_only_when_returned():
    ring = Keyring()
    handle, key = _add(ring)
    with ring.borrow(handle) as held:
        ring.forget(handle)
        assert held.key == bytearray([7]) * 32, "a concurrent forget must not zero a key in use"
        assert ring.find(b"blob", None) is None
    assert key == bytearray(32)


def test_find_matches_blob_and_context_exactly():
    ring = Keyring()
    handle, _ = _add(ring, context={"a": "1", "b": "2"})
    assert ring.find(b"blob", {"b": "2", "a": "1"}) == handle
    assert ring.find(b"blob", {"a": "1"}) is None
    assert ring.find(b"other", {"a": "1", "b": "2"}) is None


def test_find_keeps_the_newest_handle_when_an_older_duplicate_goes():
    ring = Keyring()
    older, _ = _add(ring)
    newer, _ = _add(ring)
    ring.forget(older)
    assert ring.find(b"blob", None) == newer


def test_clear_wipes_everything():
    ring = Keyring()
    keys = [_add(ring, i + 1, bytes([i]))[1] for i in range(5)]
    ring.clear()
    assert len(ring) == 0
    assert all(k == bytearray(32) for k in keys)


def test_repr_never_shows_key_material():
    ring = Keyring()
    handle, _ = _add(ring, 0x41)
    with ring.borrow(handle) as held:
        text = repr(held) + repr(ring)
    assert "AAAA" not in text
    assert "65, 65" not in text
    assert "blob" not in text


def test_rejects_nonsense_limits():
    with pytest.raises(ValueError, match="max_keys"):
        Keyring(max_keys=0)
    with pytest.raises(ValueError, match="ttl"):
        Keyring(ttl_s=0)


def test_bounded_under_many_adds_and_thread_safe():
    ring = Keyring(max_keys=50)
    keys: list[bytearray] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(200):
            handle, key = _add(ring, 1, bytes([n, i]))
            with lock:
                keys.append(key)
            try:
                with ring.borrow(handle) as held:
                    assert len(held.key) == 32
            except UnknownHandleError:
                pass

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ring) == 50
    assert sum(1 for k in keys if any(k)) == 50
    assert len(ring._expiry) <= 2 * 50 + 1
