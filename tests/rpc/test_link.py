"""The read loop facing arbitrary server bytes: every waiting call ends with a reply or a typed
error, never a hang or a foreign exception."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.parent.rpc.errors import RPCError
from nitrokms.parent.rpc.link import Link
from nitrokms.proto import messages as m
from nitrokms.proto.connection import ServerConnection


class StubWriter:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
envelopes = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 2]),
        "id": st.sampled_from([1, 2, 3, None, -1]),
        "op": st.sampled_from(["Health", "Describe", None, "Nope"]),
    },
    optional={"result": cbor_values, "error": cbor_values, "body": cbor_values},
)


def frame(envelope: dict[str, Any]) -> bytes:
    body = cbor2.dumps(envelope)
    return struct.pack(">I", len(body)) + body


good_reply = ServerConnection().send_reply(
    1,
    m.HealthResult(
        ready=True, credentials_present=False, key_pool_ready=0, key_pool_target=0, handles=0
    ),
)
streams = st.lists(
    st.binary(max_size=64) | envelopes.map(frame) | st.just(good_reply), max_size=4
).map(b"".join)


async def feed(data: bytes, chunk: int) -> list[m.Response | BaseException]:
    reader = asyncio.StreamReader()
    link = Link(reader, StubWriter(), 1 << 16, 16)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    futures = []
    for _ in range(2):
        request_id, _frame = link.proto.send_request(m.HealthRequest())
        future: asyncio.Future[m.Response] = loop.create_future()
        link.pending[request_id] = future
        futures.append(future)
    for start in range(0, len(data), chunk):
        reader.feed_data(data[start : start + chunk])
        await asyncio.sleep(0)
    reader.feed_eof()
    outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)
    await link.wait_closed()
    assert link.closed
    return outcomes


@given(streams, st.integers(1, 64))
@settings(max_examples=300, deadline=None)
def test_any_server_bytes_end_every_waiting_call_with_a_reply_or_typed_error(
    data: bytes, chunk: int
) -> None:
    for outcome in asyncio.run(feed(data, chunk)):
        assert isinstance(outcome, m.Reply | m.ErrorReply | RPCError), repr(outcome)


def test_a_valid_reply_split_byte_by_byte_reaches_its_caller() -> None:
    first, second = asyncio.run(feed(good_reply, 1))
    assert isinstance(first, m.Reply)
    assert isinstance(first.result, m.HealthResult)
    assert isinstance(second, RPCError)
    assert second.code == "client.ConnectionLost"
