"""KeyRequest: validated once, carried flat in the request bodies, wire format unchanged."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.proto import messages as m
from nitrokms.proto.errors import LocalProtocolError
from nitrokms.proto.keys import KeyRequest


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"key_id": ""}, "key_id"),
        ({"key_spec": "RSA_2048"}, "key_spec"),
        ({"number_of_bytes": 0}, "number_of_bytes"),
        ({"number_of_bytes": True}, "number_of_bytes"),
        ({"encryption_context": {"": "v"}}, "encryption_context"),
        ({"grant_tokens": ["t"] * 11}, "grant_tokens"),
        ({"key_spec": "AES_256", "number_of_bytes": 32}, "not both"),
    ],
)
def test_invalid_key_requests_name_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(LocalProtocolError, match=named) as info:
        KeyRequest(**fields)  # type: ignore[arg-type]
    assert info.value.code == "protocol.InvalidField"


def test_lists_become_tuples_and_unset_fields_are_left_out() -> None:
    key = KeyRequest("alias/a", grant_tokens=["t1", "t2"])  # type: ignore[arg-type]
    assert key.grant_tokens == ("t1", "t2")
    assert key.fields() == {"key_id": "alias/a", "grant_tokens": ("t1", "t2")}
    assert KeyRequest().fields() == {}


def test_sized_defaults_to_aes_256_only_without_a_size() -> None:
    assert KeyRequest("k").sized() == KeyRequest("k", "AES_256")
    assert KeyRequest("k", number_of_bytes=7).sized() == KeyRequest("k", number_of_bytes=7)


def test_the_generate_request_body_is_a_key_request_with_stricter_rules() -> None:
    body = m.GenerateDataKeyRequest(**KeyRequest("k", "AES_128", None, {"a": "b"}).fields())
    assert isinstance(body, KeyRequest)
    assert body.key == KeyRequest("k", "AES_128", None, {"a": "b"})
    assert type(body.key) is KeyRequest
    with pytest.raises(LocalProtocolError, match="missing field 'key_id'"):
        m.GenerateDataKeyRequest(key_spec="AES_256")
    with pytest.raises(LocalProtocolError, match="exactly one"):
        m.GenerateDataKeyRequest(key_id="k")


def test_other_bodies_expose_the_part_of_a_key_request_they_carry() -> None:
    context, tokens = {"a": "b"}, ("t",)
    load = m.LoadDataKeyRequest(b"blob", "k", context, tokens)
    seal = m.SealRequest(b"x", key_id="k", encryption_context=context, grant_tokens=tokens)
    unseal = m.UnsealRequest(b"env", context, tokens)
    assert load.key == KeyRequest("k", encryption_context=context, grant_tokens=tokens)
    assert seal.key == KeyRequest("k", encryption_context=context, grant_tokens=tokens)
    assert unseal.key == KeyRequest(encryption_context=context, grant_tokens=tokens)
    assert m.SealRequest(b"x", handle="h").key == KeyRequest()


contexts = st.none() | st.dictionaries(
    st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=4
)
tokens = st.none() | st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple)


@settings(max_examples=200)
@given(
    st.text(min_size=1, max_size=40),
    st.one_of(
        st.tuples(st.sampled_from(["AES_256", "AES_128"]), st.none()),
        st.tuples(st.none(), st.integers(1, 1024)),
    ),
    contexts,
    tokens,
)
def test_a_key_request_survives_the_wire_unchanged(
    key_id: str, size: tuple[str | None, int | None], context: object, grant: object
) -> None:
    key = KeyRequest(key_id, *size, context, grant)  # type: ignore[arg-type]
    wire = m.encode_request(m.Request(1, m.GenerateDataKeyRequest(**key.fields())))
    decoded = m.decode_request(wire).body
    assert isinstance(decoded, m.GenerateDataKeyRequest)
    assert decoded.key == key
