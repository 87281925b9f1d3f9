"""Hypothesis property tests for the targets no other directory had: the enclave's view of a
whole byte stream, and the local KMS's request handling. Same invariant as the runner."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.proto.errors import RemoteProtocolError
from nitrokms.proto.framing import encode_frame

from tests.fuzz import targets

_SETTINGS = settings(max_examples=300, deadline=None)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=10,
)


@_SETTINGS
@given(st.lists(st.binary(min_size=1, max_size=80), max_size=5), st.binary(max_size=40))
def test_any_framed_bodies_then_junk_give_requests_or_the_protocol_error(
    bodies: list[bytes], tail: bytes
) -> None:
    with contextlib.suppress(RemoteProtocolError):
        targets._server_connection(b"".join(encode_frame(b) for b in bodies) + tail)


@_SETTINGS
@given(
    st.sampled_from(targets.KMS_OPERATIONS),
    st.dictionaries(
        st.sampled_from(
            ["KeyId", "KeySpec", "NumberOfBytes", "EncryptionContext", "CiphertextBlob",
             "Plaintext", "GrantTokens", "Recipient", "DryRun", "AliasName", "Policy"]
        ),
        _json_values,
        max_size=5,
    ),
)  # fmt: skip
def test_any_json_parameters_get_a_kms_reply_never_a_500(
    operation: str, params: dict[str, object]
) -> None:
    index = targets.KMS_OPERATIONS.index(operation)
    with contextlib.suppress(targets.KMSErrorReply):
        targets._kms_body(bytes([index]) + json.dumps(params).encode())
