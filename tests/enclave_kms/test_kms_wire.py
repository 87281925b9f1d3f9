"""The sans-I/O HTTP side of the lean KMS path: requests as bytes, responses read from any
fragmentation, and any bytes at all either read or refused with HTTPResponseError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nitrokms.enclave.kms_wire import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    HTTPResponseError,
    Response,
    ResponseReader,
    encode_body,
    encode_request,
    request_headers,
)

BODY = b'{"KeyId":"k","CiphertextForRecipient":"AAAA"}'
GOLDEN: list[tuple[bytes, int, bytes, bool]] = [
    (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: "
     + str(len(BODY)).encode() + b"\r\nx-amzn-RequestId: r\r\n\r\n" + BODY, 200, BODY, True),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 400, b"", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n"
     b"6\r\n world\r\n0\r\nTrailer: x\r\n\r\n", 200, b"hello world", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
     200, b"{}", True),
    (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy",
     503, b"busy", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200, b"{}", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}", 200, b"{}",
     True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
]  # fmt: skip


def read_all(data: bytes, step: int | None = None) -> Response:
    reader = ResponseReader()
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        response = reader.feed(piece)
        if response is not None:
            return response
    return reader.eof()


@pytest.mark.parametrize(("data", "status", "body", "keep_alive"), GOLDEN)
@pytest.mark.parametrize("step", [None, 1, 7])
def test_golden_responses_whole_and_in_fragments(data, status, body, keep_alive, step):
    response = read_all(data, step)
    assert (response.status, response.body, response.keep_alive) == (status, body, keep_alive)


def test_header_names_are_case_insensitive_and_repeats_are_joined():
    response = read_all(
        b"HTTP/1.1 429 Too Many Requests\r\nX-Amz-Retry-After: 10\r\nVia: a\r\nvia: b\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert response.headers["x-amz-retry-after"] == "10"
    assert response.headers["via"] == "a, b"


def test_a_body_that_ends_with_the_connection():
    reader = ResponseReader()
    assert reader.feed(b"HTTP/1.1 500 Oops\r\n\r\npart one ") is None
    assert reader.feed(b"part two") is None
    response = reader.eof()
    assert (response.body, response.keep_alive) == (b"part one part two", False)


def test_trailing_bytes_mean_the_connection_is_not_reused():
    response = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk")
    assert response.body == b"{}"
    assert response.keep_alive is False


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # cut before the end
        b"HTTP/1.1 200 OK\r\n",  # cut in the head
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n",
    ],
)
def test_malformed_responses_are_refused(data):
    with pytest.raises(HTTPResponseError):
        read_all(data)


def test_limits_are_enforced_before_buffering():
    reader = ResponseReader()
    with pytest.raises(HTTPResponseError, match="head longer"):
        reader.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES)
    with pytest.raises(HTTPResponseError, match="body longer"):
        ResponseReader().feed(f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
                              .encode())  # fmt: skip
    chunked = ResponseReader()
    chunked.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HTTPResponseError, match="body longer"):
        chunked.feed(f"{MAX_BODY_BYTES + 1:x}\r\n".encode())
    endless = ResponseReader()
    endless.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    for _ in range(MAX_BODY_BYTES // 65536):
        endless.feed(b"x" * 65536)
    with pytest.raises(HTTPResponseError, match="body longer"):
        endless.feed(b"x")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 50))
def test_any_bytes_are_read_or_refused(data, step):
    try:
        response = read_all(data, step)
    except HTTPResponseError:
        return
    assert 100 <= response.status <= 999
    assert len(response.body) <= MAX_BODY_BYTES


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=3000),
    cuts=st.lists(st.integers(1, 400), max_size=12),
    step=st.integers(1, 97),
)
def test_chunked_bodies_come_back_whole(body, cuts, step):
    chunks, rest = [], body
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded
    assert read_all(data, step).body == body


def test_request_layout():
    body = encode_body({"KeyId": "k", "Blob": b"\xff", "Context": {"ä": "€"}})
    assert json.loads(body) == {"KeyId": "k", "Blob": "/w==", "Context": {"ä": "€"}}
    request = encode_request(request_headers("kms.us-east-1.amazonaws.com", "Decrypt"), body)
    head, _, sent = request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST / HTTP/1.1",
        b"Host: kms.us-east-1.amazonaws.com",
        b"X-Amz-Target: TrentService.Decrypt",
        b"Content-Type: application/x-amz-json-1.1",
        f"Content-Length: {len(body)}".encode(),
    ]
    assert sent == body
