"""The blocking RPC client: the asyncio client run on a private event-loop thread.

One loop thread per client owns the connection, so the blocking API keeps every property of the
async one (one read loop, many requests in flight, out-of-order replies) and any number of threads
can share a client: each call is submitted to the loop and the calling thread waits for its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from nitrokms.parent.rpc.client import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    AsyncEnclaveClient,
    Backoff,
)
from nitrokms.parent.rpc.errors import CLIENT_CLOSED, RPCConnectionError
from nitrokms.proto import messages as m
from nitrokms.proto.addresses import Address

T = TypeVar("T")
R = TypeVar("R", bound=m.Body)


class EnclaveClient:
    """Blocking twin of AsyncEnclaveClient: same methods, same errors, thread-safe."""

    def __init__(
        self,
        address: str | Address,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        backoff: Backoff | None = None,
    ) -> None:
        self._async = AsyncEnclaveClient(
            address, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, backoff=backoff
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="nitrokms-rpc", daemon=True
        )
        self._thread.start()
        self._close_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"EnclaveClient({str(self.address)!r})"

    @property
    def address(self) -> Address:
        return self._async.address

    @property
    def connections_opened(self) -> int:
        return self._async.connections_opened

    def __enter__(self) -> EnclaveClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection and stop the loop thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._async.aclose(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RPCConnectionError("the client is closed", code=CLIENT_CLOSED)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop closed under us: close() raced this call
            coro.close()
            raise RPCConnectionError("the client is closed", code=CLIENT_CLOSED) from None
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    # --- operations (see AsyncEnclaveClient for arguments and errors) -----------------------

    def set_credentials(
        self,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        session_token: str | None = None,
        expiration: datetime | None = None,
        *,
        timeout_s: float | None = None,
    ) -> None:
        self._run(
            self._async.set_credentials(
                access_key_id,
                secret_access_key,
                region,
                session_token,
                expiration,
                timeout_s=timeout_s,
            )
        )

    def generate_data_key(
        self,
        key_id: str,
        *,
        key_spec: str | None = None,
        number_of_bytes: int | None = None,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> m.GenerateDataKeyResult:
        return self._run(
            self._async.generate_data_key(
                key_id,
                key_spec=key_spec,
                number_of_bytes=number_of_bytes,
                encryption_context=encryption_context,
                grant_tokens=grant_tokens,
                timeout_s=timeout_s,
            )
        )

    def load_data_key(
        self,
        ciphertext_blob: bytes,
        *,
        key_id: str | None = None,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> m.LoadDataKeyResult:
        return self._run(
            self._async.load_data_key(
                ciphertext_blob,
                key_id=key_id,
                encryption_context=encryption_context,
                grant_tokens=grant_tokens,
                timeout_s=timeout_s,
            )
        )

    def forget_key(self, handle: str, *, timeout_s: float | None = None) -> None:
        self._run(self._async.forget_key(handle, timeout_s=timeout_s))

    def seal(
        self,
        plaintext: bytes,
        *,
        handle: str | None = None,
        key_id: str | None = None,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> m.SealResult:
        return self._run(
            self._async.seal(
                plaintext,
                handle=handle,
                key_id=key_id,
                encryption_context=encryption_context,
                grant_tokens=grant_tokens,
                timeout_s=timeout_s,
            )
        )

    def unseal(
        self,
        envelope: bytes,
        *,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> bytes:
        return self.unseal_result(
            envelope,
            encryption_context=encryption_context,
            grant_tokens=grant_tokens,
            timeout_s=timeout_s,
        ).plaintext

    def unseal_result(
        self,
        envelope: bytes,
        *,
        encryption_context: dict[str, str] | None = None,
        grant_tokens: list[str] | tuple[str, ...] | None = None,
        timeout_s: float | None = None,
    ) -> m.UnsealResult:
        return self._run(
            self._async.unseal_result(
                envelope,
                encryption_context=encryption_context,
                grant_tokens=grant_tokens,
                timeout_s=timeout_s,
            )
        )

    def attest(
        self,
        nonce: bytes | None = None,
        user_data: bytes | None = None,
        *,
        timeout_s: float | None = None,
    ) -> bytes:
        return self._run(self._async.attest(nonce, user_data, timeout_s=timeout_s))

    def describe(self, *, timeout_s: float | None = None) -> m.DescribeResult:
        return self._run(self._async.describe(timeout_s=timeout_s))

    def health(self, *, timeout_s: float | None = None) -> m.HealthResult:
        return self._run(self._async.health(timeout_s=timeout_s))

    def call(self, body: m.Body, result_type: type[R], *, timeout_s: float | None = None) -> R:
        return self._run(self._async.call(body, result_type, timeout_s=timeout_s))
