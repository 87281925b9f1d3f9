"""Sans-I/O connection state for the RPC protocol, one class per role.

A connection turns received bytes into events and messages to send into bytes; it never touches a
socket. Several requests may be in flight at once, answered in any order: the client allocates
request ids and matches replies to them; the server answers each request once.

Errors follow one rule: a failure tied to a request (a bad field, an unknown operation) is an
event the server answers with an ErrorReply on the same connection; a failure of the stream itself
(bad length header, undecodable envelope without an id) raises RemoteProtocolError, after which
the connection must be closed (the server first sends `error_reply_for(exc)`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from nitrokms.proto.codes import TOO_MANY_IN_FLIGHT
from nitrokms.proto.errors import LocalProtocolError, RemoteProtocolError
from nitrokms.proto.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_frame
from nitrokms.proto.messages import (
    MAX_REQUEST_ID,
    Body,
    ErrorReply,
    Reply,
    Request,
    RequestDecodeError,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

DEFAULT_MAX_IN_FLIGHT = 1024
MAX_REMEMBERED_CANCELLED = 4096


@dataclass(frozen=True)
class BadRequest:
    """A request the server could read an id from but not accept; answer it with `error`."""

    error: ErrorReply


ServerEvent = Request | BadRequest


class _Deferring:
    """A stream error found after some complete messages is raised on the next call, so the
    messages that arrived intact are still delivered."""

    _deferred: RemoteProtocolError | None = None

    def _raise_deferred(self) -> None:
        if self._deferred is not None:
            raise self._deferred


class ClientConnection(_Deferring):
    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)
        self._max_frame_bytes = max_frame_bytes
        self._max_in_flight = max_in_flight
        self._next_id = 1
        self._in_flight: dict[int, str] = {}
        self._cancelled: OrderedDict[int, None] = OrderedDict()

    @property
    def in_flight(self) -> frozenset[int]:
        return frozenset(self._in_flight)

    def send_request(self, body: Body) -> tuple[int, bytes]:
        """Allocate an id for `body`; return it with the frame to write.

        Raises LocalProtocolError when too many requests are in flight or the frame is too large.
        """
        if len(self._in_flight) >= self._max_in_flight:
            raise LocalProtocolError(
                f"{len(self._in_flight)} requests already in flight", code=TOO_MANY_IN_FLIGHT
            )
        request_id = self._next_id
        if request_id > MAX_REQUEST_ID:  # pragma: no cover - 2**53 requests
            raise LocalProtocolError("request ids exhausted; reconnect")
        frame = encode_frame(encode_request(Request(request_id, body)), self._max_frame_bytes)
        self._next_id += 1
        self._in_flight[request_id] = body.operation
        return request_id, frame

    def cancel(self, request_id: int) -> None:
        """Forget a request whose caller gave up (a late reply is then discarded)."""
        if self._in_flight.pop(request_id, None) is not None:
            self._cancelled[request_id] = None
            if len(self._cancelled) > MAX_REMEMBERED_CANCELLED:
                self._cancelled.popitem(last=False)

    def receive_data(self, data: bytes) -> list[Response]:
        """Feed bytes from the server; return complete responses to in-flight requests.

        Replies to cancelled requests are dropped. Raises RemoteProtocolError on a broken stream, a
        reply to an id never sent, or a reply whose operation does not match the request.
        """
        self._raise_deferred()
        responses: list[Response] = []
        try:
            self._decoder.feed(data)
            for frame in self._decoder.frames():
                response = decode_response(frame)
                if response.id is None or self._accept(response):
                    responses.append(response)
        except RemoteProtocolError as exc:
            if not responses:
                raise
            self._deferred = exc  # deliver what arrived intact first; fail on the next call
        return responses

    def receive_eof(self) -> None:
        self._raise_deferred()
        self._decoder.feed_eof()

    def _accept(self, response: Response) -> bool:
        assert response.id is not None
        operation = self._in_flight.pop(response.id, None)
        if operation is None:
            if self._cancelled.pop(response.id, 0) is None:
                return False
            raise RemoteProtocolError(f"reply to request {response.id}, which is not in flight")
        if response.operation not in (operation, None):
            raise RemoteProtocolError(
                f"reply to {operation} request {response.id} carries {response.operation}"
            )
        return True


class ServerConnection(_Deferring):
    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)
        self._max_frame_bytes = max_frame_bytes

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet decoded (part of a frame)."""
        return self._decoder.buffered_bytes

    @property
    def frame_remaining_bytes(self) -> int:
        """Bytes still to come for the frame whose header has arrived (0 between frames)."""
        return self._decoder.frame_remaining_bytes

    def receive_data(self, data: bytes) -> list[ServerEvent]:
        """Feed bytes from the client; return requests and answerable bad requests.

        Raises RemoteProtocolError when the stream itself is broken: answer with
        `error_reply_for(exc)` and close.
        """
        self._raise_deferred()
        events: list[ServerEvent] = []
        try:
            self._decoder.feed(data)
            for frame in self._decoder.frames():
                try:
                    events.append(decode_request(frame))
                except RequestDecodeError as exc:
                    if exc.request_id is None:
                        raise
                    events.append(
                        BadRequest(ErrorReply(exc.request_id, exc.operation, exc.code, exc.message))
                    )
        except RemoteProtocolError as exc:
            if not events:
                raise
            self._deferred = exc  # answer the intact requests first; fail on the next call
        return events

    def receive_eof(self) -> None:
        self._raise_deferred()
        self._decoder.feed_eof()

    def send_reply(self, request_id: int, result: Body) -> bytes:
        return self.send(Reply(request_id, result))

    def send_error(
        self, request_id: int | None, operation: str | None, code: str, message: str
    ) -> bytes:
        return self.send(ErrorReply(request_id, operation, code, message))

    def send(self, response: Response) -> bytes:
        """Frame a response. A reply too large for a frame becomes an error reply instead."""
        try:
            return encode_frame(encode_response(response), self._max_frame_bytes)
        except LocalProtocolError as exc:
            if isinstance(response, ErrorReply):
                raise
            fallback = ErrorReply(response.id, response.operation, exc.code, exc.message)
            return encode_frame(encode_response(fallback), self._max_frame_bytes)


def error_reply_for(exc: RemoteProtocolError) -> ErrorReply:
    """The connection-level error to send before closing after a broken stream."""
    request_id = exc.request_id if isinstance(exc, RequestDecodeError) else None
    operation = exc.operation if isinstance(exc, RequestDecodeError) else None
    return ErrorReply(request_id, operation, exc.code, exc.message)
