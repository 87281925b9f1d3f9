"""The asyncio RPC client for the enclave service.

httpcore's shape: the sans-I/O `ClientConnection` inside a `Link` with one read loop, and a thin
client on top that opens links lazily, sends requests and waits for their replies. Every request
has its own timeout; on expiry the request is cancelled in the connection state (a late reply is
discarded) and the connection stays usable. When the connection drops, the requests in flight fail
with `RPCConnectionError` and the next call reconnects, with exponential backoff and jitter
between failed attempts, all within the connect timeout.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, TypeVar

from nitrokms.parent.rpc.errors import (
    CLIENT_CLOSED,
    CONNECTION_FAILED,
    BrokenStreamError,
    InvalidRequestError,
    RPCConnectionError,
    RPCError,
    RPCTimeoutError,
    error_from_reply,
)
from nitrokms.parent.rpc.link import Link
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import Address, parse_address
from nitrokms.proto.connection import DEFAULT_MAX_IN_FLIGHT
from nitrokms.proto.errors import LocalProtocolError, ProtocolError
from nitrokms.proto.framing import DEFAULT_MAX_FRAME_BYTES
from nitrokms.proto.keys import KeyRequest
from nitrokms.transport.sockets import open_connection

DEFAULT_TIMEOUT_S: Final = 30.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0

R = TypeVar("R", bound=m.Body)
B = TypeVar("B", bound=m.Body | KeyRequest)


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt n+1 after n consecutive failures: exponential, capped,
    with "equal jitter" (half fixed, half random) so restarted clients do not reconnect in step."""

    initial_s: float = 0.05
    max_s: float = 2.0
    multiplier: float = 2.0

    def delay_s(self, failures: int, rng: random.Random) -> float:
        cap = min(self.max_s, self.initial_s * self.multiplier ** max(0, failures - 1))
        return cap / 2 + rng.uniform(0, cap / 2)


def build(cls: type[B], **fields: Any) -> B:
    """Construct a request body or KeyRequest, turning a validation failure into
    InvalidRequestError."""
    try:
        return cls(**{k: v for k, v in fields.items() if v is not None})
    except LocalProtocolError as exc:
        raise InvalidRequestError(exc.message, code=exc.code) from None
    except TypeError as exc:
        raise InvalidRequestError(f"{getattr(cls, 'operation', cls.__name__)}: {exc}") from None


def expiration_ms(expiration: datetime | None) -> int | None:
    """Milliseconds since the epoch. Raises InvalidRequestError for a naive datetime."""
    if expiration is None:
        return None
    if expiration.tzinfo is None or expiration.utcoffset() is None:
        raise InvalidRequestError("expiration must be a timezone-aware datetime")
    return int(expiration.timestamp() * 1000)


class AsyncEnclaveClient:
    """Calls the enclave service's operations over one multiplexed connection.

    Every method raises an RPCError subclass: a RemoteError subclass for an error reply (chosen
    by its code), RPCTimeoutError, RPCConnectionError, or InvalidRequestError for arguments
    that cannot form a request. `timeout_s` bounds each request once connected;
    `connect_timeout_s` bounds connecting, retries included.
    """

    def __init__(
        self,
        address: str | Address,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        backoff: Backoff | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        rng: random.Random | None = None,
    ) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._backoff = backoff or Backoff()
        self._max_frame_bytes = max_frame_bytes
        self._max_in_flight = max_in_flight
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._link: Link | None = None
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._failures = 0
        self._retry_at = 0.0
        self._closed = False
        self.connections_opened = 0
        self.failed_connects = 0

    def __repr__(self) -> str:
        return f"AsyncEnclaveClient({str(self.address)!r})"

    async def __aenter__(self) -> AsyncEnclaveClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; waiting callers fail with RPCConnectionError (`client.Closed`).

        The connection is closed before the first await, so a cancelled aclose still cleans up.
        """
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            link.close()
            await link.wait_closed()

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.closed

    # --- operations -----------------------------------------------------------------------

    async def set_credentials(
        self,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        session_token: str | None = None,
        expiration: datetime | None = None,
        *,
        timeout_s: float | None = None,
    ) -> None:
        body = build(
            m.SetCredentialsRequest,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            region=region,
            session_token=session_token,
            expiration_ms=expiration_ms(expiration),
        )
        await self.call(body, m.SetCredentialsResult, timeout_s=timeout_s)

    async def generate_data_key(
        self,
        key_id: str | KeyRequest,
        *,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> m.GenerateDataKeyResult:
        """A new data key, held in the enclave: AES_256 unless a size is named. `key_id` may be
        a whole KeyRequest instead, and then none of the other key fields may be given."""
        fields = {
            "key_spec": key_spec,
            "number_of_bytes": number_of_bytes,
            "encryption_context": encryption_context,
            "grant_tokens": grant_tokens,
        }
        if not isinstance(key_id, KeyRequest):
            key_id = build(KeyRequest, key_id=key_id, **fields)
        elif any(value is not None for value in fields.values()):
            raise InvalidRequestError("give a KeyRequest or the key fields, not both")
        body = build(m.GenerateDataKeyRequest, **key_id.sized().fields())
        return await self.call(body, m.GenerateDataKeyResult, timeout_s=timeout_s)

    async def load_data_key(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> m.LoadDataKeyResult:
        body = build(
            m.LoadDataKeyRequest,
            ciphertext_blob=ciphertext_blob,
            key_id=key_id,
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
        )
        return await self.call(body, m.LoadDataKeyResult, timeout_s=timeout_s)

    async def forget_key(self, handle: str, *, timeout_s: float | None = None) -> None:
        body = build(m.ForgetKeyRequest, handle=handle)
        await self.call(body, m.ForgetKeyResult, timeout_s=timeout_s)

    async def seal(
        self,
        plaintext: bytes,
        *,
        handle: str | None = None,
        key_id: str | None = None,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> m.SealResult:
        body = build(
            m.SealRequest,
            plaintext=plaintext,
            handle=handle,
            key_id=key_id,
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
        )
        return await self.call(body, m.SealResult, timeout_s=timeout_s)

    async def unseal(
        self,
        envelope: bytes,
        *,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> bytes:
        result = await self.unseal_result(
            envelope,
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
            timeout_s=timeout_s,
        )
        return result.plaintext

    async def unseal_result(
        self,
        envelope: bytes,
        *,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> m.UnsealResult:
        """Like `unseal`, returning the key id as well as the plaintext."""
        body = build(
            m.UnsealRequest,
            envelope=envelope,
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
        )
        return await self.call(body, m.UnsealResult, timeout_s=timeout_s)

    async def attest(
        self,
        nonce: bytes | None = None,
        user_data: bytes | None = None,
        *,
        timeout_s: float | None = None,
    ) -> bytes:
        body = build(m.AttestRequest, nonce=nonce, user_data=user_data)
        return (await self.call(body, m.AttestResult, timeout_s=timeout_s)).document

    async def describe(self, *, timeout_s: float | None = None) -> m.DescribeResult:
        return await self.call(m.DescribeRequest(), m.DescribeResult, timeout_s=timeout_s)

    async def health(self, *, timeout_s: float | None = None) -> m.HealthResult:
        return await self.call(m.HealthRequest(), m.HealthResult, timeout_s=timeout_s)

    # --- machinery ------------------------------------------------------------------------

    async def call(
        self, body: m.Body, result_type: type[R], *, timeout_s: float | None = None
    ) -> R:
        """Send one request body and return its result. Raises RPCError (see the class)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        link = await self._ensure_link()
        try:
            async with asyncio.timeout(timeout), self._slots:
                response = await self._exchange(link, body)
        except RPCError:
            raise
        except TimeoutError:
            raise RPCTimeoutError(f"{body.operation} got no reply within {timeout:g} s") from None
        return _result(response, result_type)

    async def _exchange(self, link: Link, body: m.Body) -> m.Response:
        """Send `body` on `link` and wait for its response; the caller bounds the time."""
        try:
            request_id, frame = link.proto.send_request(body)
        except LocalProtocolError as exc:
            raise InvalidRequestError(exc.message, code=exc.code) from None
        future: asyncio.Future[m.Response] = asyncio.get_running_loop().create_future()
        link.pending[request_id] = future
        try:
            link.writer.write(frame)
            await link.writer.drain()
            return await future
        except RPCError:
            raise
        except OSError as exc:
            link.fail(lambda: RPCConnectionError("the connection to the enclave dropped"))
            raise RPCConnectionError(f"sending {body.operation} failed: {exc}") from None
        finally:
            link.pending.pop(request_id, None)
            link.proto.cancel(request_id)

    async def _ensure_link(self) -> Link:
        link = self._link
        if link is not None and not link.closed:
            return link
        async with self._lock:
            if self._closed:
                raise RPCConnectionError("the client is closed", code=CLIENT_CLOSED)
            if self._link is None or self._link.closed:
                self._link = await self._connect()
            return self._link

    async def _connect(self) -> Link:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout_s
        problem = "no attempt fitted in the connect timeout"
        while True:
            wait_s = max(0.0, self._retry_at - loop.time())
            if loop.time() + wait_s >= deadline:
                raise RPCConnectionError(
                    f"cannot connect to the enclave at {self.address} within "
                    f"{self.connect_timeout_s:g} s: {problem}",
                    code=CONNECTION_FAILED,
                )
            await asyncio.sleep(wait_s)
            try:
                async with asyncio.timeout_at(deadline):
                    reader, writer = await open_connection(self.address)
            except ProtocolError as exc:
                raise RPCConnectionError(exc.message, code=CONNECTION_FAILED) from None
            except (OSError, TimeoutError) as exc:
                problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
                self._failures += 1
                self.failed_connects += 1
                self._retry_at = loop.time() + self._backoff.delay_s(self._failures, self._rng)
                continue
            self._failures = 0
            self.connections_opened += 1
            return Link(reader, writer, self._max_frame_bytes, self._max_in_flight)


def _result(response: m.Response, result_type: type[R]) -> R:
    if isinstance(response, m.ErrorReply):
        raise error_from_reply(response)
    result = response.result
    if not isinstance(result, result_type):
        raise BrokenStreamError(
            f"expected a {result_type.operation} result, got {result.operation}"
        )
    return result
