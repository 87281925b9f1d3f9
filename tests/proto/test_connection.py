from __future__ import annotations

import pytest
from nitrokms.proto import messages as m
from nitrokms.proto.connection import (
    BadRequest,
    ClientConnection,
    ServerConnection,
    error_reply_for,
)
from nitrokms.proto.errors import LocalProtocolError, RemoteProtocolError
from nitrokms.proto.framing import encode_frame


def test_requests_in_flight_answered_in_any_order() -> None:
    client, server = ClientConnection(), ServerConnection()
    sent = [client.send_request(m.HealthRequest()) for _ in range(3)]
    ids = [i for i, _ in sent]
    assert len(set(ids)) == 3
    events = server.receive_data(b"".join(frame for _, frame in sent))
    assert [e.id for e in events if isinstance(e, m.Request)] == ids
    result = m.HealthResult(
        ready=True, credentials_present=False, key_pool_ready=0, key_pool_target=2, handles=0
    )
    replies = b"".join(server.send_reply(i, result) for i in reversed(ids))
    got = []
    for i in range(len(replies)):  # byte by byte
        got.extend(client.receive_data(replies[i : i + 1]))
    assert [r.id for r in got] == list(reversed(ids))
    assert client.in_flight == frozenset()


def test_reply_to_unknown_id_is_a_remote_error() -> None:
    client, server = ClientConnection(), ServerConnection()
    client.send_request(m.DescribeRequest())
    with pytest.raises(RemoteProtocolError):
        client.receive_data(server.send_reply(99, m.ForgetKeyResult()))


def test_reply_with_wrong_operation_is_a_remote_error() -> None:
    client, server = ClientConnection(), ServerConnection()
    request_id, _ = client.send_request(m.ForgetKeyRequest(handle="h"))
    with pytest.raises(RemoteProtocolError):
        client.receive_data(server.send_reply(request_id, m.SetCredentialsResult()))


def test_duplicate_reply_is_a_remote_error() -> None:
    client, server = ClientConnection(), ServerConnection()
    request_id, _ = client.send_request(m.ForgetKeyRequest(handle="h"))
    reply = server.send_reply(request_id, m.ForgetKeyResult())
    assert len(client.receive_data(reply)) == 1
    with pytest.raises(RemoteProtocolError):
        client.receive_data(reply)


def test_late_reply_to_cancelled_request_is_dropped() -> None:
    client, server = ClientConnection(), ServerConnection()
    request_id, _ = client.send_request(m.ForgetKeyRequest(handle="h"))
    client.cancel(request_id)
    assert client.receive_data(server.send_reply(request_id, m.ForgetKeyResult())) == []


def test_in_flight_limit() -> None:
    client = ClientConnection(max_in_flight=2)
    client.send_request(m.HealthRequest())
    client.send_request(m.HealthRequest())
    with pytest.raises(LocalProtocolError) as info:
        client.send_request(m.HealthRequest())
    assert info.value.code == "protocol.TooManyRequests"


def test_bad_request_with_id_is_answerable_and_keeps_the_connection() -> None:
    server = ServerConnection()
    bad = encode_frame(
        m.encode_request(m.Request(5, m.HealthRequest())).replace(b"Health", b"Hxalth")
    )
    good = encode_frame(m.encode_request(m.Request(6, m.HealthRequest())))
    events = server.receive_data(bad + good)
    assert isinstance(events[0], BadRequest)
    assert events[0].error.id == 5
    assert events[0].error.code == "protocol.UnknownOperation"
    assert isinstance(events[1], m.Request)


def test_broken_stream_raises_and_yields_a_connection_level_error_reply() -> None:
    server = ServerConnection(max_frame_bytes=1000)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(b"\x00\x01\x00\x00")
    reply = error_reply_for(info.value)
    assert (reply.id, reply.code) == (None, "protocol.FrameTooLarge")
    assert m.decode_response(server.send(reply)[4:]) == reply


def test_undecodable_envelope_is_a_stream_error() -> None:
    server = ServerConnection()
    with pytest.raises(RemoteProtocolError):
        server.receive_data(encode_frame(b"\xff\xff"))


def test_oversized_reply_becomes_an_error_reply() -> None:
    client, server = ClientConnection(max_frame_bytes=1000), ServerConnection(max_frame_bytes=1000)
    request_id, _ = client.send_request(m.AttestRequest())
    frame = server.send_reply(request_id, m.AttestResult(document=b"x" * 5000))
    (reply,) = client.receive_data(frame)
    assert isinstance(reply, m.ErrorReply)
    assert reply.code == "protocol.FrameTooLarge"


def test_truncated_stream_at_eof() -> None:
    client = ClientConnection()
    client.receive_data(b"\x00\x00")
    with pytest.raises(RemoteProtocolError):
        client.receive_eof()


def test_replies_before_a_broken_frame_are_delivered_then_the_error() -> None:
    client, server = ClientConnection(), ServerConnection()
    request_id, _ = client.send_request(m.ForgetKeyRequest(handle="h"))
    data = server.send_reply(request_id, m.ForgetKeyResult()) + b"\x00\x00\x00\x00"
    (reply,) = client.receive_data(data)
    assert reply.id == request_id
    with pytest.raises(RemoteProtocolError):
        client.receive_data(b"")


def test_requests_before_a_broken_frame_are_delivered_then_the_error() -> None:
    server = ServerConnection()
    good = encode_frame(m.encode_request(m.Request(6, m.HealthRequest())))
    (event,) = server.receive_data(good + encode_frame(b"\xff"))
    assert isinstance(event, m.Request)
    with pytest.raises(RemoteProtocolError):
        server.receive_eof()
