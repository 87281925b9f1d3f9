"""The invariant for untrusted bytes: decode or raise the typed error, never anything else."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.enclave.cms import CMSError, decrypt_enveloped_data, inspect_enveloped_data
from nitrokms.enclave.errors import DecryptionError

from tests.cms.conftest import VECTORS

_SETTINGS = settings(max_examples=300, deadline=None)
_SEED_BLOBS = [
    (VECTORS / name).read_bytes()
    for name in ("kms_cms_hello-world.ber", "openssl_oaep256_issuer.der", "openssl_pkcs1v15.der")
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    blob = bytearray(draw(st.sampled_from(_SEED_BLOBS)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(blob) - 1))
        action = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        if action == "set":
            blob[pos] = draw(st.integers(0, 255))
        elif action == "insert":
            blob[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del blob[pos : pos + draw(st.integers(1, 4))]
        else:
            del blob[pos:]
        if not blob:
            break
    return bytes(blob)


def _structured_bytes() -> st.SearchStrategy[bytes]:
    tlv_bytes = st.sampled_from([0x30, 0x31, 0xA0, 0xA1, 0x80, 0x04, 0x06, 0x02, 0x05, 0x00, 0x1F])
    lengths = st.sampled_from([0x00, 0x01, 0x02, 0x10, 0x7F, 0x80, 0x81, 0x82, 0x84, 0x85, 0xFF])
    return st.lists(st.one_of(tlv_bytes, lengths, st.integers(0, 255)), max_size=200).map(bytes)


@_SETTINGS
@given(st.one_of(st.binary(max_size=600), _structured_bytes()))
def test_arbitrary_bytes_inspect_or_cms_error(data: bytes) -> None:
    with contextlib.suppress(CMSError):
        info = inspect_enveloped_data(data)
        json.dumps(info.to_json())


@_SETTINGS
@given(mutated())
def test_mutated_blobs_decrypt_or_typed_error(hello_key, data: bytes) -> None:
    with contextlib.suppress(CMSError, DecryptionError):
        json.dumps(inspect_enveloped_data(data).to_json())
        decrypt_enveloped_data(data, hello_key)
